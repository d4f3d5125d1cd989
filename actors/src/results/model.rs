//! A model experiment's own figures (docs/models.md): each variant's
//! point estimates, calibration table, drift and quality against its
//! baseline. The comparisons between model versions, with intervals and
//! p-values, are the model metrics' (`model_accuracy`, ...) in the
//! results' `metrics`.

use serde::Serialize;
use time::OffsetDateTime;

use crate::domain::{
    measures, psi, sketch_key, DriftWindow, Event, EventType, Experiment, ExperimentAggregates,
    ModelAggregates, ModelTask, Quality, QuantileSketch, Scored, VariantAggregates,
    CALIBRATION_BINS,
};

/// `model` in a model experiment's results.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelResults {
    /// Classification or regression.
    pub task: ModelTask,
    /// Hours after a prediction its outcome still joins it.
    pub join_window_hours: u32,
    /// The baseline drift and quality are measured against; `null` before
    /// the experiment starts (for a baseline relative to its start).
    pub baseline: Option<Span>,
    /// Drift and quality compare the last this many hours of predictions
    /// (up to the newest) with the baseline.
    pub window_hours: u32,
    /// Per variant, the control first.
    pub variants: Vec<ModelVariant>,
}

/// A span of time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Span {
    /// Its start.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub start: OffsetDateTime,
    /// Its end (excluded).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub end: OffsetDateTime,
}

/// One model version's figures.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelVariant {
    /// The variant.
    pub variant: String,
    /// Predictions counted (by exposed units, after their exposure).
    pub predictions: u64,
    /// Outcomes that joined one of them.
    pub outcomes: u64,
    /// `outcomes / predictions`.
    pub coverage: Option<f64>,
    /// A classifier's share of right labels.
    pub accuracy: Option<f64>,
    /// A classifier's mean log loss (natural log).
    pub log_loss: Option<f64>,
    /// A classifier's mean Brier score on the predicted label.
    pub brier: Option<f64>,
    /// A regressor's mean absolute error.
    pub mae: Option<f64>,
    /// A regressor's root mean squared error.
    pub rmse: Option<f64>,
    /// Percentiles of the predictions' `latency_ms`.
    pub latency_ms: Option<Latency>,
    /// A classifier's outcomes by the probability of the predicted label
    /// (ten bins 0.1 wide; empty for a regressor).
    pub calibration: Vec<CalibrationRow>,
    /// `Σ |accuracy - mean confidence| × outcomes / all outcomes` over the
    /// bins.
    pub expected_calibration_error: Option<f64>,
    /// The score (value) distribution of the window against the baseline.
    pub drift: Drift,
    /// Quality in the window against the baseline.
    pub quality: QualityChange,
}

/// Latency percentiles, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// One bin of a calibration table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CalibrationRow {
    /// Lowest probability of the bin.
    pub from: f64,
    /// Highest (excluded, but for the last bin).
    pub to: f64,
    /// Joined outcomes.
    pub outcomes: u64,
    /// Their mean predicted probability.
    pub mean_confidence: Option<f64>,
    /// Their share of right labels.
    pub accuracy: Option<f64>,
}

/// Drift of a variant's predictions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Drift {
    /// Population stability index of the window against the baseline, over
    /// the baseline's deciles; `null` until each has 100 predictions.
    pub psi: Option<f64>,
    /// Predictions in the baseline.
    pub baseline_predictions: u64,
    /// Predictions in the window.
    pub window_predictions: u64,
}

/// A variant's quality in the window against its baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QualityChange {
    /// In the baseline (by when the predictions were made).
    pub baseline: Option<Quality>,
    /// In the window.
    pub window: Option<Quality>,
    /// The largest relative change for the worse: the drop in accuracy,
    /// the rise in log loss or MAE; `null` until each has 100 outcomes.
    pub degradation: Option<f64>,
}

/// The model figures of `experiment` from `aggregates` (`None` for other
/// experiments).
pub fn results(experiment: &Experiment, aggregates: &ExperimentAggregates) -> Option<ModelResults> {
    let spec = experiment.model.as_ref()?;
    let tracking = spec.tracking(experiment.started_at);
    let none = ModelAggregates::default();
    // The latency metrics share one sketch.
    let derivations = experiment.derivations();
    let sketch = sketch_key(&derivations, "model_latency_p50");
    let newest = aggregates
        .variants
        .values()
        .filter_map(|v| v.model.as_ref()?.hours.last_key_value().map(|(h, _)| *h))
        .max();
    let variants = experiment
        .variants
        .iter()
        .map(|v| {
            let a = aggregates.variants.get(v.key.as_str());
            let model = a.and_then(|a| a.model.as_ref()).unwrap_or(&none);
            let window = newest.map_or_else(DriftWindow::default, |hour| {
                model.window(spec.drift.window_hours, hour * 3_600_000)
            });
            variant(v.key.as_str(), sketch, spec.task, a, model, &window)
        })
        .collect();
    Some(ModelResults {
        task: spec.task,
        join_window_hours: spec.join_window_hours,
        baseline: tracking.baseline.map(|[from, to]| Span {
            start: at(from),
            end: at(to),
        }),
        window_hours: spec.drift.window_hours,
        variants,
    })
}

fn variant(
    key: &str,
    sketch: Option<&str>,
    task: ModelTask,
    a: Option<&VariantAggregates>,
    model: &ModelAggregates,
    window: &DriftWindow,
) -> ModelVariant {
    let sum = |measure: &str| {
        a.and_then(|a| a.measures.get(measure))
            .map_or(0.0, |m| m.sum)
    };
    let ratio = |num: &str, den: &str| {
        let d = sum(den);
        (d > 0.0).then(|| sum(num) / d)
    };
    let classifier = task == ModelTask::Classification;
    let regressor = task == ModelTask::Regression;
    let predictions = sum(measures::PREDICTIONS) as u64;
    let outcomes = sum(measures::JOINED) as u64;
    let latency = sketch
        .and_then(|key| a?.sketches.get(key))
        .and_then(|s: &QuantileSketch| {
            Some(Latency {
                p50: s.quantile(0.5)?,
                p95: s.quantile(0.95)?,
                p99: s.quantile(0.99)?,
            })
        });
    let calibration: Vec<CalibrationRow> = if classifier {
        model
            .calibration
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let n = b.outcomes as f64;
                CalibrationRow {
                    from: i as f64 / CALIBRATION_BINS as f64,
                    to: (i + 1) as f64 / CALIBRATION_BINS as f64,
                    outcomes: b.outcomes,
                    mean_confidence: (b.outcomes > 0).then(|| b.confidence / n),
                    accuracy: (b.outcomes > 0).then(|| b.correct as f64 / n),
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let calibrated: u64 = calibration.iter().map(|r| r.outcomes).sum();
    let expected_calibration_error = (calibrated > 0).then(|| {
        let gap = |r: &CalibrationRow| match (r.accuracy, r.mean_confidence) {
            (Some(acc), Some(conf)) => (acc - conf).abs() * r.outcomes as f64,
            _ => 0.0,
        };
        calibration.iter().map(gap).sum::<f64>() / calibrated as f64
    });
    let baseline = model.baseline.quality(task);
    let now = window.quality(task);
    let enough =
        |q: &Option<Quality>| q.is_some_and(|q| q.outcomes >= crate::domain::MIN_DRIFT_COUNT);
    let degradation = (enough(&baseline) && enough(&now))
        .then(|| now?.degradation(baseline.as_ref()?))
        .flatten();
    ModelVariant {
        variant: key.to_owned(),
        predictions,
        outcomes,
        coverage: (predictions > 0).then(|| outcomes as f64 / predictions as f64),
        accuracy: ratio(measures::CORRECT, measures::LABELLED).filter(|_| classifier),
        log_loss: ratio(measures::LOG_LOSS, measures::LABELLED).filter(|_| classifier),
        brier: ratio(measures::BRIER, measures::LABELLED).filter(|_| classifier),
        mae: ratio(measures::ABS_ERROR, measures::VALUED).filter(|_| regressor),
        rmse: ratio(measures::SQUARED_ERROR, measures::VALUED)
            .filter(|_| regressor)
            .map(f64::sqrt),
        latency_ms: latency,
        calibration,
        expected_calibration_error,
        drift: Drift {
            psi: psi(&model.baseline, window),
            baseline_predictions: model.baseline.predictions,
            window_predictions: window.predictions,
        },
        quality: QualityChange {
            baseline,
            window: now,
            degradation,
        },
    }
}

/// `GET /v1/experiments/{key}/predictions`: the newest predictions, each
/// with the outcome that joined it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LivePredictions {
    /// The experiment.
    pub experiment: String,
    /// Newest first.
    pub predictions: Vec<LivePrediction>,
}

/// One prediction as the live view shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LivePrediction {
    /// The client's id of the prediction.
    pub prediction_id: String,
    /// The unit it was made for.
    pub unit_id: String,
    /// The variant (model version) that made it.
    pub variant: Option<String>,
    /// The model, as the client named it.
    pub model: Option<String>,
    /// A classifier's score.
    pub score: Option<f64>,
    /// A regressor's value.
    pub value: Option<f64>,
    /// The predicted label (a binary score's without one: `1` or `0`).
    pub label: Option<String>,
    /// The probability of the predicted label.
    pub confidence: Option<f64>,
    /// How long the model took.
    pub latency_ms: Option<f64>,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: OffsetDateTime,
    /// The outcome that joined it; `null` while none has.
    pub outcome: Option<LiveOutcome>,
}

/// The outcome of a live prediction.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LiveOutcome {
    /// The true label.
    pub label: Option<String>,
    /// The true value.
    pub value: Option<f64>,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: OffsetDateTime,
    /// A classifier's: whether the predicted label was right.
    pub correct: Option<bool>,
    /// A regressor's: predicted minus true.
    pub error: Option<f64>,
}

impl LivePrediction {
    /// `prediction` with `outcome`: the first of `later` (the unit's events
    /// after it, in commit order) with its id within `join_window_ms`.
    pub fn of(prediction: &Event, later: &[Event], join_window_ms: i64) -> Option<Self> {
        let fields = prediction.properties.as_ref()?.model()?;
        let outcome = later.iter().find(|o| {
            o.kind == EventType::Outcome
                && o.seq > prediction.seq
                && (prediction.timestamp_ms..=prediction.timestamp_ms + join_window_ms)
                    .contains(&o.timestamp_ms)
                && o.properties
                    .as_ref()
                    .and_then(|p| p.model())
                    .is_some_and(|m| m.prediction_id == fields.prediction_id)
        });
        let outcome = outcome.map(|o| {
            let scored = Scored::of(prediction, o);
            LiveOutcome {
                label: o
                    .properties
                    .as_ref()
                    .and_then(|p| p.model()?.label.as_deref().map(str::to_owned)),
                value: o.value,
                timestamp: at(o.timestamp_ms),
                correct: match scored {
                    Scored::Classified { correct, .. } => Some(correct),
                    _ => None,
                },
                error: match scored {
                    Scored::Regressed { error } => Some(error),
                    _ => None,
                },
            }
        });
        Some(Self {
            prediction_id: fields.prediction_id.to_string(),
            unit_id: prediction.unit_id.to_string(),
            variant: prediction.variant.as_ref().map(ToString::to_string),
            model: fields.model.as_deref().map(str::to_owned),
            score: fields.score,
            value: prediction.value,
            label: fields.guess().map(|(label, _)| label.to_owned()),
            confidence: fields.guess().map(|(_, p)| p),
            latency_ms: fields.latency_ms,
            timestamp: at(prediction.timestamp_ms),
            outcome,
        })
    }
}

/// A time of milliseconds since the epoch.
fn at(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
