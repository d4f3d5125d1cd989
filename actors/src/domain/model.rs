//! Model experiments: the variants are model versions, each unit's
//! predictions are `prediction` events and what really happened are
//! `outcome` events naming the prediction (docs/models.md).
//!
//! An outcome joins its prediction inside the unit's own state on the
//! ingest writer (`ingest/aggregator.rs`, "Predictions and outcomes"), and
//! a joined pair is counted as measures no client can send
//! ([`measures`]): a unit's outcomes, correct ones, log loss, squared
//! error, ... Each model metric ([`ModelSpec::metrics`]) is then an
//! ordinary ratio or quantile metric over them, per unit, so it gets the
//! delta method's interval clustered by unit, every comparison,
//! correction and guardrail any metric gets, and survives recomputation
//! from the unit states like any other. What is not a sum per unit — the
//! calibration table and the score distributions drift is measured on —
//! is kept per variant in [`ModelAggregates`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::quantile::bin_of;
use super::{Derivation, Event, Metric, MetricKey, MetricKind, QuantileOf};
use crate::{Error, Result};

crate::objects_only!(serialize: ModelSpec, DriftSpec);

/// Longest join window.
pub const MAX_JOIN_WINDOW_HOURS: u32 = 168;
/// Longest baseline measured from the start.
pub const MAX_BASELINE_HOURS: u32 = 720;
/// Longest window drift and quality are measured over.
pub const MAX_DRIFT_WINDOW_HOURS: u32 = 168;
/// Bins of the calibration table, each 0.1 of confidence wide.
pub const CALIBRATION_BINS: usize = 10;
/// Fewest predictions (outcomes, for quality) in the baseline and in the
/// window before drift (quality) is reported: fewer make PSI mostly noise.
pub const MIN_DRIFT_COUNT: u64 = 100;
/// The key under which an experiment's derivations carry its
/// [`ModelTracking`]; in a model experiment no metric may take it.
pub const MODEL_DERIVATION: &str = "model";
/// Bins of a window's histogram of a regressor's values beyond which the
/// lowest two merge.
const MAX_DRIFT_BINS: usize = 256;
/// Equal-width bins of a classifier's score.
const SCORE_BINS: f64 = 20.0;
/// Probabilities are clipped to `[ε, 1 - ε]` for the log loss, as
/// scikit-learn's `log_loss` does, so a confident miss costs ~34.5, not ∞.
const LOG_LOSS_EPSILON: f64 = 1e-15;
/// A share of a PSI bin that is empty counts as this, as is customary,
/// so one empty bin does not make the index infinite.
const PSI_FLOOR: f64 = 1e-4;
const HOUR_MS: i64 = 3_600_000;

/// The measures a joined outcome counts, per unit (names outside the key
/// alphabet: no event can count towards them).
pub mod measures {
    /// A prediction (1 each), counted when it is folded.
    pub const PREDICTIONS: &str = "model.predictions";
    /// An outcome that joined its prediction (1 each).
    pub const JOINED: &str = "model.joined";
    /// A classifier's joined outcome (1 each).
    pub const LABELLED: &str = "model.labelled";
    /// 1 when the predicted label was the true one, else 0.
    pub const CORRECT: &str = "model.correct";
    /// `-ln p`, `p` the probability the model gave the true outcome.
    pub const LOG_LOSS: &str = "model.log_loss";
    /// `(q - correct)²`, `q` the probability of the predicted label.
    pub const BRIER: &str = "model.brier";
    /// A regressor's joined outcome (1 each).
    pub const VALUED: &str = "model.valued";
    /// `|predicted - true|`.
    pub const ABS_ERROR: &str = "model.abs_error";
    /// `(predicted - true)²`.
    pub const SQUARED_ERROR: &str = "model.squared_error";

    /// Whether `name` is one of these: they are not client measures, so
    /// they do not count towards an experiment's bound on measures.
    pub fn is_builtin(name: &str) -> bool {
        name.starts_with("model.")
    }
}

/// What the models of an experiment predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelTask {
    /// Labels, with a probability: accuracy, log loss, Brier score,
    /// calibration.
    Classification,
    /// Numbers: mean absolute and squared error.
    Regression,
}

/// An experiment's `model`: its variants are model versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct ModelSpec {
    /// `classification` or `regression`: which model metrics it gets.
    pub task: ModelTask,
    /// Hours after a prediction its outcome may come and still join it
    /// (1-168, default 24). Outcomes later than that, or for unknown
    /// predictions, count as `outcome` events only.
    #[serde(default = "default_join_window_hours")]
    #[schema(minimum = 1, maximum = 168)]
    pub join_window_hours: u32,
    /// What drift and quality are measured against.
    #[serde(default)]
    pub drift: DriftSpec,
}

/// The baseline a model's drift and quality are measured against, and the
/// window they are measured over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct DriftSpec {
    /// The baseline is the first this many hours after the experiment
    /// starts (1-720, default 24), unless it is pinned.
    #[serde(default = "default_hours")]
    #[schema(minimum = 1, maximum = 720)]
    pub baseline_hours: u32,
    /// A pinned baseline's start (with `baseline_end`).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub baseline_start: Option<OffsetDateTime>,
    /// A pinned baseline's end (with `baseline_start`).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub baseline_end: Option<OffsetDateTime>,
    /// Drift and quality compare the last this many hours with the
    /// baseline (1-168, default 24).
    #[serde(default = "default_hours")]
    #[schema(minimum = 1, maximum = 168)]
    pub window_hours: u32,
}

impl Default for DriftSpec {
    fn default() -> Self {
        Self {
            baseline_hours: default_hours(),
            baseline_start: None,
            baseline_end: None,
            window_hours: default_hours(),
        }
    }
}

fn default_join_window_hours() -> u32 {
    24
}

fn default_hours() -> u32 {
    24
}

/// What the ingest partitions need to know of a model experiment, carried
/// in its derivations under [`MODEL_DERIVATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelTracking {
    /// Classification or regression.
    pub task: ModelTask,
    /// How long after its prediction an outcome joins it, in ms.
    pub join_window_ms: i64,
    /// The baseline, `[from, to)` in ms since the epoch; `None` before a
    /// relative baseline's experiment has started.
    pub baseline: Option<[i64; 2]>,
    /// The window drift and quality are measured over, in hours: each
    /// variant keeps that many hourly histograms.
    pub window_hours: u32,
}

impl ModelSpec {
    /// Checks the bounds; errors name fields under `model.`.
    pub(super) fn check(&self) -> Result<()> {
        if !(1..=MAX_JOIN_WINDOW_HOURS).contains(&self.join_window_hours) {
            return Err(Error::invalid(
                "model.join_window_hours",
                format!("join_window_hours must be 1 to {MAX_JOIN_WINDOW_HOURS}"),
            ));
        }
        let d = &self.drift;
        if !(1..=MAX_BASELINE_HOURS).contains(&d.baseline_hours) {
            return Err(Error::invalid(
                "model.drift.baseline_hours",
                format!("baseline_hours must be 1 to {MAX_BASELINE_HOURS}"),
            ));
        }
        if !(1..=MAX_DRIFT_WINDOW_HOURS).contains(&d.window_hours) {
            return Err(Error::invalid(
                "model.drift.window_hours",
                format!("window_hours must be 1 to {MAX_DRIFT_WINDOW_HOURS}"),
            ));
        }
        match (d.baseline_start, d.baseline_end) {
            (None, None) => Ok(()),
            (Some(start), Some(end)) if start < end => Ok(()),
            (Some(_), Some(_)) => Err(Error::invalid(
                "model.drift.baseline_end",
                "a pinned baseline ends after it starts",
            )),
            _ => Err(Error::invalid(
                "model.drift",
                "a pinned baseline has both baseline_start and baseline_end",
            )),
        }
    }

    /// The metrics a model experiment gets besides its own, each a ratio
    /// or quantile metric over the join's measures (per unit, so their
    /// intervals are clustered by unit like every other metric's).
    pub fn metrics(&self) -> Vec<Metric> {
        use measures::*;
        let ratio = |key, numerator, denominator| Metric {
            key: MetricKey::builtin(key),
            kind: MetricKind::Ratio,
            measure: Some(MetricKey::builtin(numerator)),
            denominator: Some(MetricKey::builtin(denominator)),
            cap: None,
            cuped: None,
            quantile: None,
            of: None,
            mde: None,
        };
        let latency = |key, level| Metric {
            key: MetricKey::builtin(key),
            kind: MetricKind::Quantile,
            measure: Some(MetricKey::builtin("prediction")),
            denominator: None,
            cap: None,
            cuped: None,
            quantile: Some(level),
            of: Some(QuantileOf::LatencyMs),
            mde: None,
        };
        let mut metrics = match self.task {
            ModelTask::Classification => vec![
                ratio("model_accuracy", CORRECT, LABELLED),
                ratio("model_log_loss", LOG_LOSS, LABELLED),
                ratio("model_brier", BRIER, LABELLED),
            ],
            ModelTask::Regression => vec![
                ratio("model_mae", ABS_ERROR, VALUED),
                ratio("model_mse", SQUARED_ERROR, VALUED),
            ],
        };
        metrics.extend([
            ratio("model_coverage", JOINED, PREDICTIONS),
            latency("model_latency_p50", 0.5),
            latency("model_latency_p95", 0.95),
            latency("model_latency_p99", 0.99),
        ]);
        metrics
    }

    /// What the partitions keep for it, the experiment having started at
    /// `started_at` (a relative baseline has no span before).
    pub fn tracking(&self, started_at: Option<OffsetDateTime>) -> ModelTracking {
        let ms = |t: OffsetDateTime| super::unix_ms(t);
        let baseline = match (self.drift.baseline_start, self.drift.baseline_end) {
            (Some(start), Some(end)) => Some([ms(start), ms(end)]),
            _ => started_at.map(|s| {
                let from = ms(s);
                [from, from + i64::from(self.drift.baseline_hours) * HOUR_MS]
            }),
        };
        ModelTracking {
            task: self.task,
            join_window_ms: i64::from(self.join_window_hours) * HOUR_MS,
            baseline,
            window_hours: self.drift.window_hours,
        }
    }

    /// The derivation carrying [`ModelSpec::tracking`].
    pub fn derivation(&self, started_at: Option<OffsetDateTime>) -> Derivation {
        Derivation {
            measure: "prediction".to_owned(),
            cap: None,
            denominator: None,
            covariate: None,
            quantile: None,
            model: Some(self.tracking(started_at)),
            phases: None,
        }
    }
}

/// A joined prediction and outcome, scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scored {
    /// A classifier's: whether its label was right, and the probability
    /// it gave that label.
    Classified {
        /// The predicted label was the true one.
        correct: bool,
        /// The probability of the predicted label.
        confidence: f64,
    },
    /// A regressor's: predicted minus true.
    Regressed {
        /// The error.
        error: f64,
    },
    /// A pair of different kinds (a score and a true value): joined, not
    /// scored.
    Unscored,
}

impl Scored {
    /// Scores `prediction` against `outcome`.
    pub fn of<'e>(prediction: &'e Event, outcome: &'e Event) -> Self {
        let fields = |e: &'e Event| e.properties.as_ref().and_then(|p| p.model());
        let (Some(p), Some(o)) = (fields(prediction), fields(outcome)) else {
            return Self::Unscored;
        };
        match (
            p.guess(),
            o.label.as_deref(),
            prediction.value,
            outcome.value,
        ) {
            (Some((label, confidence)), Some(truth), _, _) => Self::Classified {
                correct: label == truth,
                confidence: confidence.clamp(0.0, 1.0),
            },
            (None, None, Some(predicted), Some(truth)) => Self::Regressed {
                error: predicted - truth,
            },
            _ => Self::Unscored,
        }
    }

    /// The measures this pair adds to its unit, beyond
    /// [`measures::JOINED`].
    pub fn measures(self) -> Vec<(&'static str, f64)> {
        use measures::*;
        match self {
            Self::Classified {
                correct,
                confidence,
            } => {
                let hit = f64::from(u8::from(correct));
                let p = if correct {
                    confidence
                } else {
                    1.0 - confidence
                };
                vec![
                    (LABELLED, 1.0),
                    (CORRECT, hit),
                    (LOG_LOSS, log_loss(p)),
                    (BRIER, (confidence - hit).powi(2)),
                ]
            }
            Self::Regressed { error } => vec![
                (VALUED, 1.0),
                (ABS_ERROR, error.abs()),
                (SQUARED_ERROR, super::finite(error * error)),
            ],
            Self::Unscored => Vec::new(),
        }
    }
}

/// `-ln p`, `p` clipped to `[ε, 1 - ε]`.
fn log_loss(p: f64) -> f64 {
    -p.clamp(LOG_LOSS_EPSILON, 1.0 - LOG_LOSS_EPSILON).ln()
}

/// What a variant's model did beyond sums per unit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelAggregates {
    /// A classifier's joined outcomes by the probability of the predicted
    /// label, in ten bins 0.1 wide.
    #[schema(value_type = Vec<CalibrationBin>)]
    pub calibration: [CalibrationBin; CALIBRATION_BINS],
    /// Predictions made in the baseline, and their joined outcomes.
    pub baseline: DriftWindow,
    /// The same per hour (ms since the epoch / 3,600,000), for the last
    /// `window_hours` hours predictions were made in.
    pub hours: BTreeMap<i64, DriftWindow>,
}

/// One bin of a calibration table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CalibrationBin {
    /// Joined outcomes.
    pub outcomes: u64,
    /// Sum of their predictions' probabilities.
    pub confidence: f64,
    /// Those whose label was right.
    pub correct: u64,
}

/// Predictions made in a span of time and what their outcomes said.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriftWindow {
    /// Predictions.
    pub predictions: u64,
    /// Their scores (a regressor's values), binned: 20 equal bins of a
    /// score, 2%-wide log bins of a value.
    #[schema(value_type = Object)]
    pub scores: BTreeMap<i32, u64>,
    /// Joined outcomes.
    pub outcomes: u64,
    /// A classifier's correct labels.
    pub correct: u64,
    /// Sum of a classifier's log losses.
    pub log_loss: f64,
    /// Sum of a regressor's absolute errors.
    pub abs_error: f64,
}

impl DriftWindow {
    fn predicted(&mut self, bin: i32) {
        self.predictions += 1;
        *self.scores.entry(bin).or_default() += 1;
        while self.scores.len() > MAX_DRIFT_BINS {
            let Some((_, lowest)) = self.scores.pop_first() else {
                return;
            };
            if let Some(mut next) = self.scores.first_entry() {
                *next.get_mut() += lowest;
            }
        }
    }

    fn joined(&mut self, scored: Scored) {
        self.outcomes += 1;
        match scored {
            Scored::Classified {
                correct,
                confidence,
            } => {
                self.correct += u64::from(correct);
                let p = if correct {
                    confidence
                } else {
                    1.0 - confidence
                };
                self.log_loss = super::finite(self.log_loss + log_loss(p));
            }
            Scored::Regressed { error } => {
                self.abs_error = super::finite(self.abs_error + error.abs());
            }
            Scored::Unscored => {}
        }
    }

    fn merge(&mut self, other: &DriftWindow) {
        self.predictions += other.predictions;
        for (bin, n) in &other.scores {
            *self.scores.entry(*bin).or_default() += n;
        }
        self.outcomes += other.outcomes;
        self.correct += other.correct;
        self.log_loss = super::finite(self.log_loss + other.log_loss);
        self.abs_error = super::finite(self.abs_error + other.abs_error);
    }

    /// A classifier's accuracy, mean log loss, or a regressor's MAE: the
    /// figure whose change is the model's quality (`None` without
    /// outcomes).
    pub fn quality(&self, task: ModelTask) -> Option<Quality> {
        let n = self.outcomes as f64;
        (self.outcomes > 0).then(|| match task {
            ModelTask::Classification => Quality {
                accuracy: Some(self.correct as f64 / n),
                log_loss: Some(self.log_loss / n),
                mae: None,
                outcomes: self.outcomes,
            },
            ModelTask::Regression => Quality {
                accuracy: None,
                log_loss: None,
                mae: Some(self.abs_error / n),
                outcomes: self.outcomes,
            },
        })
    }
}

/// A window's model quality.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Quality {
    /// Joined outcomes it is measured on.
    pub outcomes: u64,
    /// A classifier's share of right labels.
    pub accuracy: Option<f64>,
    /// A classifier's mean log loss.
    pub log_loss: Option<f64>,
    /// A regressor's mean absolute error.
    pub mae: Option<f64>,
}

impl Quality {
    /// How much worse `self` is than `baseline`, relatively: the largest
    /// of the drop in accuracy and the rises in log loss and MAE (0 or
    /// below when nothing got worse).
    pub fn degradation(&self, baseline: &Quality) -> Option<f64> {
        let worse = |now: Option<f64>, was: Option<f64>, higher_is_better: bool| {
            let (now, was) = (now?, was?);
            (was > 0.0).then(|| {
                let change = (now - was) / was;
                if higher_is_better {
                    -change
                } else {
                    change
                }
            })
        };
        [
            worse(self.accuracy, baseline.accuracy, true),
            worse(self.log_loss, baseline.log_loss, false),
            worse(self.mae, baseline.mae, false),
        ]
        .into_iter()
        .flatten()
        .reduce(f64::max)
    }
}

/// The bin a prediction's score (a regressor's value) counts in.
fn score_bin(task: ModelTask, x: f64) -> i32 {
    match task {
        ModelTask::Classification => ((x * SCORE_BINS).floor() as i32).clamp(0, 19),
        ModelTask::Regression => bin_of(x),
    }
}

impl ModelAggregates {
    /// Counts a prediction made at `at_ms` with score (or value) `x`.
    pub fn predicted(&mut self, tracking: &ModelTracking, at_ms: i64, x: f64) {
        let bin = score_bin(tracking.task, x);
        if in_baseline(tracking, at_ms) {
            self.baseline.predicted(bin);
        }
        if let Some(window) = self.hour_mut(tracking, at_ms) {
            window.predicted(bin);
        }
    }

    /// Counts an outcome joined to a prediction made at `at_ms`.
    pub fn joined(&mut self, tracking: &ModelTracking, at_ms: i64, scored: Scored) {
        if let Scored::Classified {
            correct,
            confidence,
        } = scored
        {
            let bin = ((confidence * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
            let b = &mut self.calibration[bin];
            b.outcomes += 1;
            b.confidence = super::finite(b.confidence + confidence);
            b.correct += u64::from(correct);
        }
        if in_baseline(tracking, at_ms) {
            self.baseline.joined(scored);
        }
        if let Some(window) = self.hour_mut(tracking, at_ms) {
            window.joined(scored);
        }
    }

    /// The window of the hour of `at_ms`, unless it is older than the
    /// newest hour's window: hours that fall out of it are dropped.
    fn hour_mut(&mut self, tracking: &ModelTracking, at_ms: i64) -> Option<&mut DriftWindow> {
        let hour = at_ms.div_euclid(HOUR_MS);
        let newest = self
            .hours
            .last_key_value()
            .map_or(hour, |(h, _)| *h)
            .max(hour);
        let oldest = newest - i64::from(tracking.window_hours) + 1;
        if hour < oldest {
            return None;
        }
        self.hours = self.hours.split_off(&oldest);
        Some(self.hours.entry(hour).or_default())
    }

    /// Adds another share's (other units').
    pub fn merge(&mut self, other: &ModelAggregates) {
        for (ours, theirs) in self.calibration.iter_mut().zip(&other.calibration) {
            ours.outcomes += theirs.outcomes;
            ours.confidence = super::finite(ours.confidence + theirs.confidence);
            ours.correct += theirs.correct;
        }
        self.baseline.merge(&other.baseline);
        for (hour, w) in &other.hours {
            self.hours.entry(*hour).or_default().merge(w);
        }
    }

    /// The predictions of the `window_hours` hours up to `now_ms`.
    pub fn window(&self, window_hours: u32, now_ms: i64) -> DriftWindow {
        let newest = now_ms.div_euclid(HOUR_MS);
        let oldest = newest - i64::from(window_hours) + 1;
        let mut sum = DriftWindow::default();
        for (_, w) in self.hours.range(oldest..=newest) {
            sum.merge(w);
        }
        sum
    }
}

fn in_baseline(tracking: &ModelTracking, at_ms: i64) -> bool {
    tracking
        .baseline
        .is_some_and(|[from, to]| (from..to).contains(&at_ms))
}

/// The population stability index of `current` against `baseline`:
/// `Σ (c - b) ln(c / b)` over ten bins holding a tenth of the baseline
/// each (its deciles, as far as its bins allow), each share at least
/// 10⁻⁴. `None` while either has fewer than [`MIN_DRIFT_COUNT`]
/// predictions. Below 0.1 is usually read as stable, above 0.25 as a
/// shift.
pub fn psi(baseline: &DriftWindow, current: &DriftWindow) -> Option<f64> {
    let (nb, nc) = (baseline.predictions, current.predictions);
    if nb < MIN_DRIFT_COUNT || nc < MIN_DRIFT_COUNT {
        return None;
    }
    // The upper bin of each decile of the baseline.
    let mut edges = Vec::with_capacity(10);
    let mut seen = 0u64;
    for (bin, n) in &baseline.scores {
        seen += n;
        while edges.len() < 10 && seen * 10 >= (edges.len() as u64 + 1) * nb {
            edges.push(*bin);
        }
    }
    edges.dedup();
    if edges.is_empty() {
        return None;
    }
    let group = |bin: i32| edges.partition_point(|&e| e < bin).min(edges.len() - 1);
    let shares = |w: &DriftWindow| {
        let mut counts = vec![0u64; edges.len()];
        for (bin, n) in &w.scores {
            counts[group(*bin)] += n;
        }
        let total = counts.iter().sum::<u64>().max(1) as f64;
        counts
            .into_iter()
            .map(|c| (c as f64 / total).max(PSI_FLOOR))
            .collect::<Vec<f64>>()
    };
    let (b, c) = (shares(baseline), shares(current));
    Some(b.iter().zip(&c).map(|(b, c)| (c - b) * (c / b).ln()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(task: ModelTask, values: impl IntoIterator<Item = f64>) -> DriftWindow {
        let mut w = DriftWindow::default();
        for v in values {
            w.predicted(score_bin(task, v));
        }
        w
    }

    #[test]
    fn psi_of_a_distribution_against_itself_is_zero_and_grows_with_a_shift() {
        let c = ModelTask::Classification;
        let scores: Vec<f64> = (0..1000).map(|i| f64::from(i) / 1000.0).collect();
        let same = psi(&window(c, scores.clone()), &window(c, scores.clone())).unwrap();
        assert!(same.abs() < 1e-12, "{same}");
        let shifted = scores.iter().map(|s| (s + 0.2).min(1.0));
        let moved = psi(&window(c, scores.clone()), &window(c, shifted)).unwrap();
        assert!(moved > 0.25, "{moved}");
        // Too few predictions: no index.
        assert_eq!(psi(&window(c, scores), &window(c, [0.5; 99])), None);
    }

    #[test]
    fn psi_matches_the_formula_on_deciles() {
        // Baseline: 100 values in each of ten score bins 0.1 wide; current:
        // twice as many in the lowest bin as in each of the others.
        let c = ModelTask::Classification;
        let base = (0..10).flat_map(|d| std::iter::repeat_n(f64::from(d) / 10.0 + 0.01, 100));
        let now = (0..10).flat_map(|d| {
            std::iter::repeat_n(f64::from(d) / 10.0 + 0.01, if d == 0 { 200 } else { 100 })
        });
        let got = psi(&window(c, base), &window(c, now)).unwrap();
        let (b, first, rest) = (0.1, 200.0 / 1100.0, 100.0 / 1100.0);
        let want = (first - b) * f64::ln(first / b) + 9.0 * (rest - b) * f64::ln(rest / b);
        assert!((got - want).abs() < 1e-12, "{got} {want}");
    }

    #[test]
    fn classifier_pairs_score_log_loss_and_brier_on_the_predicted_label() {
        let e = |kind: &str, props: serde_json::Value, value: Option<f64>| Event {
            properties: Some(super::super::Properties::of(props)),
            value,
            ..Event::sample(kind, "u")
        };
        let binary = e(
            "prediction",
            serde_json::json!({"prediction_id": "p", "score": 0.8}),
            None,
        );
        let yes = e(
            "outcome",
            serde_json::json!({"prediction_id": "p", "label": true}),
            None,
        );
        let no = e(
            "outcome",
            serde_json::json!({"prediction_id": "p", "label": 0}),
            None,
        );
        let m = |s: Scored| s.measures().into_iter().collect::<BTreeMap<_, _>>();
        let hit = m(Scored::of(&binary, &yes));
        assert_eq!(hit[measures::CORRECT], 1.0);
        assert!((hit[measures::LOG_LOSS] + 0.8f64.ln()).abs() < 1e-12);
        assert!((hit[measures::BRIER] - 0.04).abs() < 1e-12);
        let miss = m(Scored::of(&binary, &no));
        assert_eq!(miss[measures::CORRECT], 0.0);
        assert!((miss[measures::LOG_LOSS] + 0.2f64.ln()).abs() < 1e-12);
        assert!((miss[measures::BRIER] - 0.64).abs() < 1e-12);
        // Below 0.5 the binary label is 0, with probability 1 - score.
        let low = e(
            "prediction",
            serde_json::json!({"prediction_id": "p", "score": 0.1}),
            None,
        );
        let low_no = m(Scored::of(&low, &no));
        assert_eq!(low_no[measures::CORRECT], 1.0);
        assert!((low_no[measures::LOG_LOSS] + 0.9f64.ln()).abs() < 1e-12);
        // A labelled prediction: confidence is the label's probability.
        let cat = e(
            "prediction",
            serde_json::json!({"prediction_id": "p", "score": 0.3, "label": "cat", "confidence": 0.6}),
            None,
        );
        let dog = e(
            "outcome",
            serde_json::json!({"prediction_id": "p", "label": "dog"}),
            None,
        );
        let wrong = m(Scored::of(&cat, &dog));
        assert!((wrong[measures::LOG_LOSS] + 0.4f64.ln()).abs() < 1e-12);
        assert!((wrong[measures::BRIER] - 0.36).abs() < 1e-12);
        // A regressor: the error.
        let guess = e(
            "prediction",
            serde_json::json!({"prediction_id": "p"}),
            Some(10.0),
        );
        let truth = e(
            "outcome",
            serde_json::json!({"prediction_id": "p"}),
            Some(13.0),
        );
        let r = m(Scored::of(&guess, &truth));
        assert_eq!(
            (r[measures::ABS_ERROR], r[measures::SQUARED_ERROR]),
            (3.0, 9.0)
        );
        // Different kinds join but are not scored.
        assert_eq!(Scored::of(&guess, &yes), Scored::Unscored);
    }

    /// The model cases of `tests/stats/reference.py`: binary classifiers'
    /// pairs scored with the textbook formulas (sklearn's log loss, the
    /// Brier score of the positive class), calibration and ECE, and PSI.
    #[test]
    fn model_figures_agree_with_the_reference_cases() {
        let cases: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/stats/cases.json")).unwrap();
        let cases = cases["models"].as_array().unwrap();
        assert!(cases.len() >= 9, "{} model cases", cases.len());
        let close = |name: &str, what: &str, got: f64, want: &serde_json::Value| {
            let want = want.as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{name}, {what}: {got} vs {want}"
            );
        };
        let c = ModelTask::Classification;
        let numbers = |v: &serde_json::Value| -> Vec<f64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        for case in cases {
            let name = case["name"].as_str().unwrap();
            if case["kind"] == "psi" {
                let baseline = window(c, numbers(&case["baseline"]));
                let current = window(c, numbers(&case["current"]));
                close(name, "psi", psi(&baseline, &current).unwrap(), &case["psi"]);
                continue;
            }
            let tracking = ModelTracking {
                task: c,
                join_window_ms: HOUR_MS,
                baseline: Some([0, HOUR_MS]),
                window_hours: 1,
            };
            let mut m = ModelAggregates::default();
            let (mut sums, mut n) = (BTreeMap::<&str, f64>::new(), 0.0);
            for pair in case["pairs"].as_array().unwrap() {
                let (score, truth) = (pair[0].as_f64().unwrap(), pair[1].as_u64().unwrap());
                let e = |kind: &str, props: serde_json::Value| Event {
                    properties: Some(super::super::Properties::of(props)),
                    ..Event::sample(kind, "u")
                };
                let scored = Scored::of(
                    &e(
                        "prediction",
                        serde_json::json!({"prediction_id": "p", "score": score}),
                    ),
                    &e(
                        "outcome",
                        serde_json::json!({"prediction_id": "p", "label": truth}),
                    ),
                );
                for (measure, value) in scored.measures() {
                    *sums.entry(measure).or_default() += value;
                }
                m.joined(&tracking, 0, scored);
                n += 1.0;
            }
            close(
                name,
                "accuracy",
                sums[measures::CORRECT] / n,
                &case["accuracy"],
            );
            close(
                name,
                "log loss",
                sums[measures::LOG_LOSS] / n,
                &case["log_loss"],
            );
            close(name, "brier", sums[measures::BRIER] / n, &case["brier"]);
            let table = case["calibration"].as_array().unwrap();
            let mut gap = 0.0;
            for (bin, want) in m.calibration.iter().zip(table) {
                assert_eq!(bin.outcomes, want["outcomes"].as_u64().unwrap(), "{name}");
                assert_eq!(bin.correct, want["correct"].as_u64().unwrap(), "{name}");
                if bin.outcomes > 0 {
                    let k = bin.outcomes as f64;
                    gap += (bin.correct as f64 / k - bin.confidence / k).abs() * k;
                }
            }
            close(name, "ece", gap / n, &case["expected_calibration_error"]);
        }
    }

    #[test]
    fn hourly_windows_keep_the_last_hours_only() {
        let tracking = ModelTracking {
            task: ModelTask::Classification,
            join_window_ms: HOUR_MS,
            baseline: Some([0, 2 * HOUR_MS]),
            window_hours: 3,
        };
        let mut m = ModelAggregates::default();
        for hour in 0..10 {
            m.predicted(&tracking, hour * HOUR_MS + 1, 0.5);
        }
        assert_eq!(m.baseline.predictions, 2);
        assert_eq!(m.hours.keys().copied().collect::<Vec<_>>(), vec![7, 8, 9]);
        // A late prediction for an hour out of the window is not kept.
        m.predicted(&tracking, HOUR_MS, 0.5);
        assert_eq!(m.window(3, 9 * HOUR_MS).predictions, 3);
        assert_eq!(m.window(3, 10 * HOUR_MS).predictions, 2);
    }

    #[test]
    fn quality_degradation_takes_the_worst_change() {
        let base = Quality {
            outcomes: 100,
            accuracy: Some(0.8),
            log_loss: Some(0.5),
            mae: None,
        };
        let now = Quality {
            accuracy: Some(0.72),
            log_loss: Some(0.55),
            ..base
        };
        let d = now.degradation(&base).unwrap();
        assert!((d - 0.1).abs() < 1e-12, "{d}");
    }
}
