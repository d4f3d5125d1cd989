//! Results: an experiment's aggregates run through [`crate::stats`], one
//! metric at a time, plus the sample-ratio-mismatch check. Costs
//! microseconds per metric, whatever the number of events behind it.

use serde::Serialize;
use time::OffsetDateTime;

use super::model::ModelResults;
use crate::domain::{
    sketch_key, Correction, Derivations, Experiment, ExperimentAggregates, Metric, MetricKind,
    PhaseView, QuantileSketch, QuantileSpec, Status, VariantAggregates,
};
use crate::stats::{
    self, Arm, Comparison, Covariates, CupedFit, Denominator, Quantiles, Settings, Srm, TunedFor,
    VariantStats,
};

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
    /// Sample-ratio mismatch: exposed units against configured weights;
    /// with several phases, each phase's check combined (the sum of their
    /// chi-squares, with the sum of their degrees of freedom).
    pub srm: Srm,
    /// Which phases the figures read: `all` (each phase weighed by its
    /// share of the units) or `latest`.
    pub phase: PhaseView,
    /// Each phase: its allocation, its units and its own sample-ratio
    /// check against its weights (none while a draft).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseCheck>,
    /// How the comparisons' adjusted p-values were formed.
    pub correction: Family,
    /// One entry per metric asked for.
    pub metrics: Vec<MetricResults>,
    /// Every guardrail against every treatment.
    pub guardrails: Vec<GuardrailCheck>,
    /// A model experiment's calibration, drift and quality per variant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelResults>,
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
    /// Metric key.
    pub metric: String,
    /// Binomial, mean, ratio or quantile.
    pub kind: MetricKind,
    /// The measure counted (a ratio's numerator).
    pub measure: String,
    /// A ratio's denominator measure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denominator: Option<String>,
    /// A quantile metric's quantile, and what it reads from each event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantile: Option<QuantileSpec>,
    /// The cap on each unit's value, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap: Option<f64>,
    /// With a cap: per variant (the control first), the units whose value
    /// was above it and counts as the cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capped_units: Option<Vec<u64>>,
    /// With CUPED: the covariate and the regression every estimate,
    /// interval and p-value above was adjusted by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuped: Option<CupedResults>,
    /// Why the metric has no figures yet: its definition changed and its
    /// sums are being recomputed from the stored unit states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<&'static str>,
    /// Whether this is the experiment's primary metric.
    pub primary: bool,
    /// How the always-valid p-values were tuned.
    pub sequential: Sequential,
    /// Per variant, the control first.
    pub variants: Vec<VariantStats>,
    /// Each treatment against the control.
    pub comparisons: Vec<Comparison>,
}

/// The always-valid test of a metric (docs/statistics.md, "Tuning to the
/// plan").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Sequential {
    /// What its mixture is tuned for: the plan's units per variant, a
    /// minimum detectable effect, the default, or a mixing variance set
    /// by hand.
    pub tuned_for: TunedFor,
    /// ρ = τ²/v at the planned horizon, the ratio that minimises the z the
    /// test needs there (`null` with a mixing variance set by hand).
    pub rho: Option<f64>,
}

/// One phase of an experiment, as results show it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PhaseCheck {
    /// 1 for the first.
    pub number: u32,
    /// When it began.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: OffsetDateTime,
    /// Each variant's weight in it, the control first.
    pub weights: Vec<f64>,
    /// Its coverage.
    pub coverage: f64,
    /// Units first exposed in it, per variant, the control first.
    pub units: Vec<u64>,
    /// Those units against its weights.
    pub srm: Srm,
}

/// Results of `experiment` from `aggregates` (as kept: by stratum), for
/// `metric` (all of the experiment's metrics when `None`; the caller
/// checks the key exists) over the phases of `view`. One metric's
/// p-values are corrected with the others all the same.
pub fn compute(
    experiment: &Experiment,
    kept: &ExperimentAggregates,
    metric: Option<&str>,
    view: PhaseView,
) -> ExperimentResults {
    let aggregates = &*kept.by_variant(experiment, view);
    let per_variant = per_variant(experiment, aggregates);
    let (srm, units) = match view {
        PhaseView::All => sample_ratio(experiment, kept),
        PhaseView::Latest => sample_ratio(experiment, aggregates),
    };
    let (mut metrics, correction) = analyse_all(experiment, aggregates, &per_variant);
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
        phase: view,
        phases: phase_checks(experiment, kept),
        correction,
        metrics,
        guardrails: guardrails(experiment, aggregates),
        model: super::model::results(experiment, aggregates),
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
        let (metrics, _) = analyse_all(experiment, aggregates, &per_variant);
        return metrics.into_iter().find(|m| m.metric == key.as_str());
    }
    let metrics = experiment.analysed_metrics();
    let metric = metrics.iter().find(|m| &m.key == key)?;
    Some(analyse(experiment, aggregates, &per_variant, metric))
}

/// Every metric's results, corrected as the experiment says, and how.
fn analyse_all(
    experiment: &Experiment,
    aggregates: &ExperimentAggregates,
    per_variant: &[Option<&VariantAggregates>],
) -> (Vec<MetricResults>, Family) {
    let mut metrics: Vec<MetricResults> = experiment
        .analysed_metrics()
        .iter()
        .map(|m| analyse(experiment, aggregates, per_variant, m))
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

/// How a CUPED metric was adjusted.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CupedResults {
    /// The measure whose pre-exposure sum is each unit's covariate.
    pub covariate: String,
    /// Days before each unit's first exposure that count.
    pub window_days: u32,
    /// The regression (θ and the share of variance removed).
    #[serde(flatten)]
    pub fit: CupedFit,
}

/// One metric's estimates and comparisons.
fn analyse(
    experiment: &Experiment,
    aggregates: &ExperimentAggregates,
    per_variant: &[Option<&VariantAggregates>],
    m: &Metric,
) -> MetricResults {
    let settings = settings(experiment, m);
    let (analysis, pending) = match arms(experiment, aggregates, per_variant, m) {
        Some(arms) => (stats::analyse(settings, &arms), None),
        None => {
            let arms = units_only(experiment, per_variant);
            (
                stats::unavailable(settings, &arms, RECOMPUTING),
                Some(RECOMPUTING),
            )
        }
    };
    let capped_units = m.cap.filter(|_| pending.is_none()).map(|_| {
        per_variant
            .iter()
            .map(|a| {
                let d = a.and_then(|a| a.derived.get(m.key.as_str()));
                d.map_or(0, |d| d.capped.round() as u64)
            })
            .collect()
    });
    let cuped = m
        .cuped
        .as_ref()
        .zip(analysis.cuped)
        .map(|(c, fit)| CupedResults {
            covariate: c
                .covariate
                .as_ref()
                .map_or_else(|| m.measure().to_owned(), ToString::to_string),
            window_days: c.window_days,
            fit,
        });
    MetricResults {
        metric: m.key.to_string(),
        kind: m.kind,
        measure: m.measure().to_owned(),
        cuped,
        denominator: m.denominator.as_ref().map(ToString::to_string),
        quantile: m.quantile_spec(),
        cap: m.cap,
        capped_units,
        pending,
        primary: experiment.primary_metric.as_ref() == Some(&m.key),
        sequential: Sequential {
            tuned_for: settings.tuned_for,
            rho: match settings.tuned_for {
                TunedFor::MixingVariance { .. } => None,
                _ => Some(stats::sequential::rho(experiment.alpha)),
            },
        },
        variants: analysis.variants,
        comparisons: analysis.comparisons,
    }
}

/// Why a capped or ratio metric has no figures for a moment.
const RECOMPUTING: &str = "the metric's definition changed: its sums are being recomputed";

/// Every guardrail of `experiment` against every treatment.
pub fn guardrails(
    experiment: &Experiment,
    aggregates: &ExperimentAggregates,
) -> Vec<GuardrailCheck> {
    let per_variant = per_variant(experiment, aggregates);
    let metrics = experiment.analysed_metrics();
    let mut out = Vec::new();
    for g in &experiment.guardrails {
        let Some(metric) = metrics.iter().find(|m| m.key == g.metric) else {
            continue;
        };
        let Some(arms) = arms(experiment, aggregates, &per_variant, metric) else {
            continue;
        };
        let Some(((_, control), treatments)) = arms.split_first() else {
            continue;
        };
        let tests: Vec<_> = treatments
            .iter()
            .map(|(_, arm)| {
                stats::regression(
                    settings(experiment, metric),
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

pub(crate) fn per_variant<'a>(
    experiment: &Experiment,
    aggregates: &'a ExperimentAggregates,
) -> Vec<Option<&'a VariantAggregates>> {
    experiment
        .variants
        .iter()
        .map(|v| aggregates.variants.get(v.key.as_str()))
        .collect()
}

/// Each variant's aggregates for one metric, the control first; `None`
/// while a capped or ratio metric's derived sums were kept for another
/// definition than the metric's (they are being recomputed).
pub(crate) fn arms<'a>(
    experiment: &'a Experiment,
    aggregates: &ExperimentAggregates,
    per_variant: &[Option<&VariantAggregates>],
    metric: &Metric,
) -> Option<Vec<(&'a str, Arm)>> {
    let derivation = metric.derivation();
    let derivations = if metric.kind == MetricKind::Quantile {
        experiment.derivations()
    } else {
        Derivations::new()
    };
    // Without data every sum is 0, whatever the definition.
    if derivation.is_some()
        && !aggregates.variants.is_empty()
        && aggregates.derived.get(metric.key.as_str()) != derivation.as_ref()
    {
        return None;
    }
    let arms = experiment.variants.iter().zip(per_variant).map(|(v, a)| {
        let measure = a.and_then(|a| a.measures.get(metric.measure()));
        let mut arm = Arm {
            units: a.map_or(0, |a| a.units),
            conversions: measure.map_or(0, |m| m.units),
            events: measure.map_or(0, |m| m.events),
            sum: measure.map_or(0.0, |m| m.sum),
            sum_squares: measure.map_or(0.0, |m| m.sum_squares),
            denominator: None,
            covariate: None,
            quantile: None,
        };
        if derivation.is_some() {
            let derived = a
                .and_then(|a| a.derived.get(metric.key.as_str()))
                .copied()
                .unwrap_or_default();
            (arm.sum, arm.sum_squares) = (derived.sum, derived.sum_squares);
            arm.denominator = metric.denominator.as_ref().map(|key| {
                let d = a.and_then(|a| a.measures.get(key.as_str()));
                Denominator {
                    sum: d.map_or(0.0, |d| d.sum),
                    sum_squares: d.map_or(0.0, |d| d.sum_squares),
                    cross: derived.cross,
                }
            });
            arm.covariate = metric.cuped.as_ref().map(|_| Covariates {
                sum: derived.pre_sum,
                sum_squares: derived.pre_sum_squares,
                cross: derived.pre_cross,
            });
        }
        if let Some(spec) = derivation.as_ref().and_then(|d| d.quantile) {
            let sketch = sketch_key(&derivations, metric.key.as_str())
                .and_then(|key| a.and_then(|a| a.sketches.get(key)));
            arm.events = sketch.map_or(0, QuantileSketch::count);
            arm.quantile =
                Some(sketch.map_or_else(Quantiles::default, |s| Quantiles::of(s, spec.level)));
        }
        (v.key.as_str(), arm)
    });
    Some(arms.collect())
}

/// Each variant with its exposed units alone.
fn units_only<'a>(
    experiment: &'a Experiment,
    per_variant: &[Option<&VariantAggregates>],
) -> Vec<(&'a str, Arm)> {
    let units = |a: &Option<&VariantAggregates>| Arm {
        units: a.map_or(0, |a| a.units),
        ..Arm::default()
    };
    let keys = experiment.variants.iter().map(|v| v.key.as_str());
    keys.zip(per_variant.iter().map(units)).collect()
}

fn settings(experiment: &Experiment, metric: &Metric) -> Settings {
    Settings {
        kind: metric.kind,
        alpha: experiment.alpha,
        tuned_for: tuned_for(experiment, metric),
    }
}

/// What `metric`'s always-valid p-value is tuned for: a mixing variance
/// set by hand, else the metric's minimum detectable effect, else the
/// plan's units per variant, else the plan's minimum detectable effect,
/// else the default units.
pub fn tuned_for(experiment: &Experiment, metric: &Metric) -> TunedFor {
    let plan = experiment.plan.unwrap_or_default();
    if let Some(mixing_variance) = experiment.mixing_variance {
        TunedFor::MixingVariance { mixing_variance }
    } else if let Some(mde) = metric.mde {
        TunedFor::Mde { mde }
    } else if let Some(units_per_variant) = plan.units_per_variant {
        TunedFor::Plan { units_per_variant }
    } else if let Some(mde) = plan.mde {
        TunedFor::Mde { mde }
    } else {
        TunedFor::Default {
            units_per_variant: stats::sequential::DEFAULT_UNITS_PER_VARIANT,
        }
    }
}

/// The SRM check and the exposed units per variant it is based on.
pub fn sample_ratio(experiment: &Experiment, aggregates: &ExperimentAggregates) -> (Srm, Vec<u64>) {
    let strata = aggregates.strata();
    let units: Vec<u64> = experiment
        .variants
        .iter()
        .map(|v| {
            strata
                .values()
                .filter_map(|s| s.get(v.key.as_str()))
                .map(|a| a.units)
                .sum()
        })
        .collect();
    if strata.len() > 1 {
        let checks = phase_checks(experiment, aggregates);
        let srm = stats::srm_across(checks.iter().map(|c| (&c.units[..], &c.weights[..])));
        return (srm, units);
    }
    let weights: Vec<f64> = experiment.variants.iter().map(|v| v.weight).collect();
    (stats::srm(&units, &weights), units)
}

/// Each phase of `experiment` with its units in `aggregates` (as kept: by
/// stratum) and its own sample-ratio check.
pub fn phase_checks(experiment: &Experiment, aggregates: &ExperimentAggregates) -> Vec<PhaseCheck> {
    let strata = aggregates.strata();
    experiment
        .phases
        .iter()
        .map(|p| {
            let units: Vec<u64> = experiment
                .variants
                .iter()
                .map(|v| {
                    strata
                        .get(&p.number)
                        .and_then(|s| s.get(v.key.as_str()))
                        .map_or(0, |a| a.units)
                })
                .collect();
            PhaseCheck {
                number: p.number,
                started_at: p.started_at,
                weights: p.weights.clone(),
                coverage: p.coverage,
                srm: stats::srm(&units, &p.weights),
                units,
            }
        })
        .collect()
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
