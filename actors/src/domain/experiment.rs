//! Experiments: the stored record, the create and patch bodies, and the
//! rules every experiment obeys. Creation and patching both end in
//! [`Experiment::check`], so there is one definition of "valid".

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::ids::check_printable;
use super::{
    phase, Action, Allocation, BanditSpec, Covariate, Derivation, ExperimentKey, MetricKey,
    ModelSpec, Phase, QuantileOf, QuantileSpec, Segment, Span, Status, UnitId, VariantKey,
    MODEL_DERIVATION, PHASES_DERIVATION,
};
use crate::{Error, Result};

// Bodies are read from JSON objects only, never from arrays of their
// fields (domain/objects.rs).
crate::objects_only!(serialize: Variant, Layer, Guardrail, Metric, Cuped, Bucketing);
crate::objects_only!(ExperimentIn, ExperimentPatch);

/// Most variants an experiment may have.
pub const MAX_VARIANTS: usize = 20;
const MAX_NAME_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 4000;
const MAX_SALT_CHARS: usize = 128;
/// Most phases an experiment may have: each weight or coverage change of
/// a running experiment starts one, and each adds segments to its layout.
pub const MAX_PHASES: usize = 100;
/// How long after a change of allocation its phase starts. The new split
/// is served from the change on; units first exposed in this second still
/// count in the phase before (a second of units against all of that
/// phase's), so that none served under the old split, whose exposure may
/// be stamped a moment after the change, counts in the new phase, which
/// starts from nothing; and the ingest partitions learn of the phase
/// before its first exposure arrives.
pub const PHASE_GRACE: time::Duration = time::Duration::seconds(1);
/// Most forced overrides an experiment may have.
pub const MAX_FORCED: usize = 10_000;
const MAX_METRICS: usize = 50;
/// Longest CUPED pre-exposure window.
pub const MAX_CUPED_WINDOW_DAYS: u32 = 90;

/// An experiment as the engine holds it and the API and webhooks show it.
/// The store keeps an [`ExperimentRecord`](super::ExperimentRecord).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Experiment {
    /// Unique key, `[a-z0-9_-]{1,64}`.
    pub key: ExperimentKey,
    /// Human-readable name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Lifecycle status.
    pub status: Status,
    /// The variants; the first is the control. Weights are normalised to sum 1.
    pub variants: Vec<Variant>,
    /// Share of the population (0..=1) that takes part.
    pub coverage: f64,
    /// The widest coverage since the experiment first started (today's
    /// while it is a draft). Ranges grow from fixed starts, so a unit the
    /// hash puts in today was in under any wider coverage too: only a unit
    /// inside this peak but outside today's coverage can have a first
    /// exposure that differs from the hash. Internal: not shown by the API.
    #[serde(skip)]
    pub peak_coverage: f64,
    /// Hash salt; defaults to the key. GrowthBook calls it the seed.
    pub salt: String,
    /// How units are hashed into the bucket space.
    pub bucketing: Bucketing,
    /// Mutually exclusive layer this experiment occupies a slice of.
    pub layer: Option<Layer>,
    /// The allocation history: phase 1 from the start, and one more for
    /// each change of weights or coverage since (none while a draft).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
    /// Units pinned to a variant, for QA. They win over everything else.
    pub forced: BTreeMap<UnitId, VariantKey>,
    /// Metrics analysed for this experiment.
    pub metrics: Vec<Metric>,
    /// The metric that decides the experiment.
    pub primary_metric: Option<MetricKey>,
    /// Significance level.
    pub alpha: f64,
    /// Variance of the normal mixture the always-valid (mSPRT) p-value puts
    /// over the relative lift, when set by hand; `null`: tuned to `plan`
    /// (docs/statistics.md, "Tuning to the plan").
    pub mixing_variance: Option<f64>,
    /// What the team planned, which the always-valid p-value is tuned to.
    #[serde(default)]
    pub plan: Option<Plan>,
    /// How p-values are corrected across every treatment × metric; `null`:
    /// Holm across each metric's treatments apart.
    pub correction: Option<Correction>,
    /// When the primary metric first became significant (corrected
    /// always-valid p-value below alpha); recorded once.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub significant_at: Option<OffsetDateTime>,
    /// When a sample-ratio mismatch was first detected; recorded once.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub srm_detected_at: Option<OffsetDateTime>,
    /// Metrics that must not get worse; see [`Guardrail`].
    #[serde(default)]
    pub guardrails: Vec<Guardrail>,
    /// A model experiment: its variants are model versions
    /// (docs/models.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// How its weights are set: `fixed` (left out) or `bandit`.
    #[serde(skip_serializing_if = "Allocation::is_fixed")]
    pub allocation: Allocation,
    /// A bandit's settings (present exactly when `allocation` is `bandit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandit: Option<BanditSpec>,
    /// Why a guardrail paused the experiment, if one did (recorded once;
    /// resuming by hand does not clear it, and it does not trip again).
    #[serde(default)]
    pub guardrail_stop: Option<GuardrailStop>,
    /// Variant served to everyone once completed; `null` means the control.
    pub winner: Option<VariantKey>,
    /// Incremented by every change.
    pub version: u64,
    /// When the experiment was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    /// When it was first started.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<OffsetDateTime>,
    /// When it was completed.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub completed_at: Option<OffsetDateTime>,
}

/// One arm of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct Variant {
    /// Key, unique within the experiment.
    pub key: VariantKey,
    /// Relative weight (> 0); stored normalised so all weights sum to 1.
    #[schema(exclusive_minimum = 0.0)]
    pub weight: f64,
    /// Arbitrary JSON handed to the client with the assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// How an experiment hashes units into `[0, 1)` (docs/assignment.md). The
/// ranges over that space are the same either way: `[start, start +
/// coverage * w)` from fixed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(
    remote = "Self",
    tag = "scheme",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Bucketing {
    /// abacus's own: `md5(salt + ":" + unit)`.
    #[default]
    Abacus,
    /// GrowthBook's, so that a running GrowthBook experiment recreated here
    /// keeps every user's variant: FNV-1a 32 over UTF-16 code units with the
    /// salt as seed; version 1 is `fnv(unit + seed) % 1000 / 1000`, version
    /// 2 is `fnv(decimal(fnv(seed + unit))) % 10000 / 10000`. Weights are
    /// kept as given (they must sum to 1 within 0.01, as GrowthBook
    /// requires), and a layer is GrowthBook's namespace.
    Growthbook {
        /// GrowthBook's `hashVersion`: 1 or 2.
        #[schema(minimum = 1, maximum = 2)]
        hash_version: u8,
    },
}

/// A slice `[start, end)` of a layer's hash space. Experiments in the same
/// layer with disjoint slices never share a unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct Layer {
    /// The layer's key; it is the salt of the layer hash (1-128
    /// characters without control characters).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub key: String,
    /// Inclusive lower bound, 0..1.
    #[schema(minimum = 0.0, exclusive_maximum = 1.0)]
    pub start: f64,
    /// Exclusive upper bound, start..=1.
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub end: f64,
}

impl Layer {
    /// Whether the two slices share a layer and some of its range, so that
    /// one unit could fall in both.
    pub fn overlaps(&self, other: &Layer) -> bool {
        self.key == other.key && self.start < other.end && other.start < self.end
    }
}

/// A metric to analyse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct Metric {
    /// The metric's name in results, unique within the experiment; also
    /// the measure counted (event type or `metric` event name) unless
    /// `measure` names another.
    pub key: MetricKey,
    /// How per-unit values are formed.
    pub kind: MetricKind,
    /// The measure counted, when it is not `key`: how two metrics read one
    /// measure (`revenue` and a capped `revenue_capped`). For a ratio, the
    /// numerator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measure: Option<MetricKey>,
    /// A ratio's denominator measure (required for `kind: ratio`, refused
    /// otherwise): the metric is sum of numerators / sum of denominators
    /// over the variant's units, analysed with the delta method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<MetricKey>,
    /// Winsorisation: each unit's value (its sum of the measure; for a
    /// ratio, of the numerator) counts at most this much. Above 0; mean
    /// and ratio metrics only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0.0)]
    pub cap: Option<f64>,
    /// Variance reduction by regression on each unit's behaviour before
    /// its first exposure (mean metrics only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuped: Option<Cuped>,
    /// The quantile a `kind: quantile` metric tests, in (0, 1) (0.9 for
    /// p90); required for that kind, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub quantile: Option<f64>,
    /// What a quantile metric reads from each event of its measure:
    /// `value` (default), `response_time_ms` or `dwell_time_ms`. Events
    /// without it are not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<QuantileOf>,
    /// This metric's smallest relative lift worth detecting (0.05 = 5%):
    /// its always-valid p-value is tuned to it rather than to the
    /// experiment's plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0.0, maximum = 10.0)]
    pub mde: Option<f64>,
}

/// CUPED: each unit's sum of a measure over the days before its first
/// exposure is its covariate (docs/statistics.md, "CUPED").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct Cuped {
    /// Days before the first exposure whose events count, 1-90.
    #[schema(minimum = 1, maximum = 90)]
    pub window_days: u32,
    /// The measure summed; default: the metric's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariate: Option<MetricKey>,
}

impl Metric {
    /// The measure counted (for a ratio, the numerator).
    pub fn measure(&self) -> &str {
        self.measure.as_ref().unwrap_or(&self.key).as_str()
    }

    /// What the aggregates must keep for this metric beyond each
    /// measure's plain sums: `None` for a plain binomial or mean metric.
    pub fn derivation(&self) -> Option<Derivation> {
        let derived = self.cap.is_some()
            || self.denominator.is_some()
            || self.cuped.is_some()
            || self.kind == MetricKind::Quantile;
        derived.then(|| Derivation {
            measure: self.measure().to_owned(),
            cap: self.cap,
            denominator: self.denominator.as_ref().map(ToString::to_string),
            covariate: self.cuped.as_ref().map(|c| Covariate {
                measure: c
                    .covariate
                    .as_ref()
                    .map_or_else(|| self.measure().to_owned(), ToString::to_string),
                window_ms: i64::from(c.window_days) * 86_400_000,
            }),
            quantile: self.quantile_spec(),
            model: None,
            phases: None,
        })
    }

    /// What a quantile metric keeps a sketch of (`None` for other kinds).
    pub fn quantile_spec(&self) -> Option<QuantileSpec> {
        (self.kind == MetricKind::Quantile).then(|| QuantileSpec {
            level: self.quantile.unwrap_or(0.5),
            of: self.of.unwrap_or_default(),
        })
    }

    /// Checks the fields that depend on each other; `at` is the metric's
    /// place in the list, for the error's field.
    fn check(&self, at: usize) -> Result<()> {
        let field = |name: &str| format!("metrics[{at}].{name}");
        match (self.kind, &self.denominator) {
            (MetricKind::Ratio, None) => {
                return Err(Error::invalid(
                    field("denominator"),
                    "a ratio metric needs a denominator",
                ))
            }
            (MetricKind::Binomial | MetricKind::Mean | MetricKind::Quantile, Some(_)) => {
                return Err(Error::invalid(
                    field("denominator"),
                    "only a ratio metric has a denominator",
                ))
            }
            (_, Some(d)) if d.as_str() == self.measure() => {
                return Err(Error::invalid(
                    field("denominator"),
                    "the denominator must be another measure than the numerator",
                ))
            }
            _ => {}
        }
        if let Some(cuped) = &self.cuped {
            if self.kind != MetricKind::Mean {
                return Err(Error::invalid(
                    field("cuped"),
                    "CUPED applies to mean metrics",
                ));
            }
            if !(1..=MAX_CUPED_WINDOW_DAYS).contains(&cuped.window_days) {
                return Err(Error::invalid(
                    field("cuped.window_days"),
                    format!("window_days must be 1 to {MAX_CUPED_WINDOW_DAYS}"),
                ));
            }
        }
        match (self.kind, self.quantile) {
            (MetricKind::Quantile, None) => {
                return Err(Error::invalid(
                    field("quantile"),
                    "a quantile metric needs the quantile it tests, e.g. 0.9",
                ))
            }
            (MetricKind::Quantile, Some(q)) if !(q > 0.0 && q < 1.0) => {
                return Err(Error::invalid(
                    field("quantile"),
                    "quantile must be above 0 and below 1",
                ))
            }
            (MetricKind::Quantile, _) => {}
            (_, Some(_)) => {
                return Err(Error::invalid(
                    field("quantile"),
                    "only a quantile metric has a quantile",
                ))
            }
            (_, None) if self.of.is_some() => {
                return Err(Error::invalid(
                    field("of"),
                    "only a quantile metric reads a value other than its measure's",
                ))
            }
            _ => {}
        }
        if let Some(cap) = self.cap {
            if matches!(self.kind, MetricKind::Binomial | MetricKind::Quantile) {
                return Err(Error::invalid(
                    field("cap"),
                    "only mean and ratio metrics can be capped",
                ));
            }
            if !(cap.is_finite() && cap > 0.0) {
                return Err(Error::invalid(
                    field("cap"),
                    "cap must be a finite number above 0",
                ));
            }
        }
        Ok(())
    }
}

/// A metric a treatment must not make worse than the control by more than
/// `max_relative_drop`. A regression beyond it that is significant by the
/// always-valid p-value shows in results, fires `guardrail_regression`
/// alert rules, and with `auto_stop` pauses the experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct Guardrail {
    /// One of the experiment's metrics.
    pub metric: MetricKey,
    /// Tolerated relative change in the bad direction (0.05 = 5%), at
    /// least 0 and below 1.
    #[schema(minimum = 0.0, exclusive_maximum = 1.0)]
    pub max_relative_drop: f64,
    /// `false` for metrics where less is better (errors, latency): then a
    /// rise is the regression.
    #[serde(default = "yes")]
    pub higher_is_better: bool,
    /// Pause the experiment (everyone gets the control) on a regression.
    #[serde(default)]
    pub auto_stop: bool,
}

fn yes() -> bool {
    true
}

/// What a guardrail saw when it paused the experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GuardrailStop {
    /// The guardrail metric.
    pub metric: MetricKey,
    /// The treatment that regressed.
    pub variant: VariantKey,
    /// Its relative lift against the control.
    pub relative_lift: Option<f64>,
    /// The always-valid p-value of the regression (Holm across treatments).
    pub p_value: f64,
    /// The tolerance it exceeded.
    pub max_relative_drop: f64,
    /// When it paused the experiment.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

/// How a metric turns a unit's events into one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Did the unit do it at least once.
    Binomial,
    /// The unit's sum of values.
    Mean,
    /// Sum of numerators over sum of denominators (clicks per impression).
    Ratio,
    /// A quantile of the values of every event (p90 response time),
    /// its variance clustered by unit.
    Quantile,
}

/// How an experiment's p-values are corrected for testing every treatment
/// against every metric at once (docs/statistics.md, "Multiple testing").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// Holm's step-down: bounds the chance of any false positive.
    Holm,
    /// Benjamini–Hochberg's step-up: bounds the expected share of false
    /// discoveries among the significant, with more power than Holm.
    Bh,
    /// Each comparison's own p-value.
    #[serde(rename = "none")]
    Uncorrected,
}

/// Body of `POST /v1/experiments`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct ExperimentIn {
    /// Unique key, `[a-z0-9_-]{1,64}`; it cannot change later.
    pub key: ExperimentKey,
    /// Human-readable name: 1-200 characters, not all blank.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: String,
    /// Free text, up to 4,000 characters.
    #[serde(default)]
    #[schema(max_length = 4000)]
    pub description: Option<String>,
    /// 2 to 20 variants with distinct keys; the first is the control.
    #[schema(min_items = 2, max_items = 20)]
    pub variants: Vec<Variant>,
    /// Share of the population that takes part, 0..=1 (default 1).
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub coverage: Option<f64>,
    /// Hash salt, 1-128 characters without control characters (default:
    /// the key).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub salt: Option<String>,
    /// How units are hashed (default: `{"scheme": "abacus"}`).
    #[serde(default)]
    pub bucketing: Option<Bucketing>,
    /// Layer slice.
    #[serde(default)]
    pub layer: Option<Layer>,
    /// Forced overrides, unit id → one of the variants' keys (at most
    /// 10,000).
    #[serde(default)]
    pub forced: BTreeMap<UnitId, VariantKey>,
    /// Metrics to analyse, at most 50 with distinct keys.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub metrics: Vec<Metric>,
    /// The deciding metric; must be one of `metrics`.
    #[serde(default)]
    pub primary_metric: Option<MetricKey>,
    /// Significance level, between 0 and 1 exclusive (default 0.05).
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub alpha: Option<f64>,
    /// mSPRT mixing variance over the relative lift, above 0 and at most
    /// 100, set by hand (default: tuned to `plan`).
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 100.0)]
    pub mixing_variance: Option<f64>,
    /// What the team planned (units per variant, minimum detectable
    /// effect), which the always-valid p-value is tuned to.
    #[serde(default)]
    pub plan: Option<Plan>,
    /// Correction across every treatment × metric (default `null`: Holm
    /// across each metric's treatments).
    #[serde(default)]
    pub correction: Option<Correction>,
    /// Guardrail metrics; each must be one of `metrics` (or of the model
    /// metrics), each at most once.
    #[serde(default)]
    pub guardrails: Vec<Guardrail>,
    /// Makes it a model experiment: predictions and outcomes are joined
    /// and the model metrics analysed (docs/models.md).
    #[serde(default)]
    pub model: Option<ModelSpec>,
    /// `fixed` (the default) or `bandit`: the weights then follow the
    /// primary metric by Thompson sampling (docs/assignment.md, "Bandits").
    #[serde(default)]
    pub allocation: Option<Allocation>,
    /// A bandit's settings; the defaults when absent.
    #[serde(default)]
    pub bandit: Option<BanditSpec>,
}

/// Body of `PATCH /v1/experiments/{key}`. Absent fields stay as they are;
/// `null` clears `description`, `layer`, `primary_metric` and `correction`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct ExperimentPatch {
    /// New name (any time): 1-200 characters, not all blank.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: Option<String>,
    /// New description (any time), up to 4,000 characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 4000)]
    pub description: Option<Option<String>>,
    /// New coverage, 0..=1 (any time). Raising it never moves a unit
    /// already in.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub coverage: Option<f64>,
    /// New variants and weights (draft only): 2 to 20 with distinct keys.
    #[serde(default)]
    #[schema(min_items = 2, max_items = 20)]
    pub variants: Option<Vec<Variant>>,
    /// New salt (draft only), 1-128 characters without control characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub salt: Option<String>,
    /// New hashing scheme (draft only).
    #[serde(default)]
    pub bucketing: Option<Bucketing>,
    /// New layer slice (draft only).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Layer>)]
    pub layer: Option<Option<Layer>>,
    /// Replaces the forced overrides (any time), at most 10,000.
    #[serde(default)]
    pub forced: Option<BTreeMap<UnitId, VariantKey>>,
    /// Replaces the metrics (any time), at most 50 with distinct keys.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub metrics: Option<Vec<Metric>>,
    /// New primary metric (any time).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<MetricKey>)]
    pub primary_metric: Option<Option<MetricKey>>,
    /// New significance level (any time), between 0 and 1 exclusive.
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub alpha: Option<f64>,
    /// New mSPRT mixing variance (any time), above 0 and at most 100;
    /// `null` tunes it to `plan` again.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>, exclusive_minimum = 0.0, maximum = 100.0)]
    pub mixing_variance: Option<Option<f64>>,
    /// New plan (any time); `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Plan>)]
    pub plan: Option<Option<Plan>>,
    /// New correction across treatments × metrics (any time); `null`
    /// gives back Holm per metric.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Correction>)]
    pub correction: Option<Option<Correction>>,
    /// Replaces the guardrails (any time).
    #[serde(default)]
    pub guardrails: Option<Vec<Guardrail>>,
    /// Replaces the model settings (any time); `null` makes it an
    /// ordinary experiment.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<ModelSpec>)]
    pub model: Option<Option<ModelSpec>>,
    /// `fixed` or `bandit` (draft only).
    #[serde(default)]
    pub allocation: Option<Allocation>,
    /// Replaces a bandit's settings (any time; the next update uses them).
    #[serde(default)]
    pub bandit: Option<BanditSpec>,
}

/// Tells "field present and null" (`Some(None)`) from "field absent" (`None`).
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl Experiment {
    /// The metrics analysed: the experiment's own and, for a model
    /// experiment, the model metrics after them.
    pub fn analysed_metrics(&self) -> Cow<'_, [Metric]> {
        match &self.model {
            None => Cow::Borrowed(&self.metrics),
            Some(model) => {
                let mut all = self.metrics.clone();
                all.extend(model.metrics());
                Cow::Owned(all)
            }
        }
    }

    /// The metrics whose aggregates need derived sums, by key, and a
    /// model experiment's [`ModelTracking`](super::ModelTracking) under
    /// [`MODEL_DERIVATION`].
    pub fn derivations(&self) -> BTreeMap<String, Derivation> {
        let mut all: BTreeMap<String, Derivation> = self
            .analysed_metrics()
            .iter()
            .filter_map(|m| Some((m.key.to_string(), m.derivation()?)))
            .collect();
        if let Some(model) = &self.model {
            all.insert(
                MODEL_DERIVATION.to_owned(),
                model.derivation(self.started_at),
            );
        }
        if let Some(phases) = phase::derivation(&self.phases) {
            all.insert(PHASES_DERIVATION.to_owned(), phases);
        }
        all
    }

    /// The current phase's number (0 while a draft).
    pub fn phase(&self) -> u32 {
        self.phases.last().map_or(0, |p| p.number)
    }

    /// The current layout by variant index: the last phase's, or one
    /// segment per variant while there is none.
    pub fn layout(&self) -> Vec<Span> {
        match self.phases.last() {
            Some(p) => self.spans(p),
            None => phase::contiguous(&self.weights()),
        }
    }

    /// A phase's layout by variant index (segments of unknown variants
    /// are left out: the variants of a started experiment never change).
    pub fn spans(&self, phase: &Phase) -> Vec<Span> {
        phase
            .layout
            .iter()
            .filter_map(|s| {
                Some(Span {
                    start: s.start,
                    end: s.end,
                    variant: self.variant_index(s.variant.as_str())?,
                })
            })
            .collect()
    }

    fn weights(&self) -> Vec<f64> {
        self.variants.iter().map(|v| v.weight).collect()
    }

    /// A phase starting `now` with the current weights and coverage, laid
    /// out from the current layout with the least change.
    fn next_phase(&self, from: &[Span], now: OffsetDateTime) -> Phase {
        let weights = self.weights();
        let layout = if self.phases.is_empty() {
            phase::contiguous(&weights)
        } else {
            phase::relayout(from, &weights)
        };
        Phase {
            number: self.phase() + 1,
            started_at: now,
            weights,
            coverage: self.coverage,
            layout: layout
                .into_iter()
                .map(|s| Segment {
                    start: s.start,
                    end: s.end,
                    variant: self.variants[s.variant].key.clone(),
                })
                .collect(),
        }
    }

    /// Applies new variants to a started experiment: the same keys in the
    /// same order; new weights (and payloads) only.
    fn reweigh(&mut self, variants: Vec<Variant>) -> Result<()> {
        let same_keys = variants.len() == self.variants.len()
            && variants
                .iter()
                .zip(&self.variants)
                .all(|(a, b)| a.key == b.key);
        if !same_keys {
            return Err(Error::Reallocation {
                message: format!(
                    "the variants of a {} experiment keep their keys and order; \
                     only their weights and payloads may change",
                    self.status.as_str()
                ),
            });
        }
        let variants = weighed(variants, self.bucketing)?;
        let reweighed = variants
            .iter()
            .zip(&self.variants)
            .any(|(a, b)| a.weight != b.weight);
        if reweighed && self.allocation == Allocation::Bandit {
            return Err(Error::Reallocation {
                message: "a bandit sets its own weights; only its payloads may change".to_owned(),
            });
        }
        if reweighed && matches!(self.bucketing, Bucketing::Growthbook { .. }) {
            return Err(Error::Reallocation {
                message: "an experiment with GrowthBook bucketing keeps its weights once \
                          started: GrowthBook's SDKs lay out ranges afresh from the weights"
                    .to_owned(),
            });
        }
        self.variants = variants;
        Ok(())
    }

    /// A new draft from a create request, validated.
    pub fn create(input: ExperimentIn, now: OffsetDateTime) -> Result<Self> {
        let salt = input.salt.unwrap_or_else(|| input.key.to_string());
        let coverage = input.coverage.unwrap_or(1.0);
        let bucketing = input.bucketing.unwrap_or_default();
        let experiment = Self {
            name: input.name,
            description: input.description,
            status: Status::Draft,
            variants: weighed(input.variants, bucketing)?,
            coverage,
            peak_coverage: coverage,
            salt,
            bucketing,
            layer: input.layer,
            phases: Vec::new(),
            forced: input.forced,
            metrics: input.metrics,
            primary_metric: input.primary_metric,
            alpha: input.alpha.unwrap_or(0.05),
            mixing_variance: input.mixing_variance,
            plan: input.plan,
            correction: input.correction,
            significant_at: None,
            srm_detected_at: None,
            guardrails: input.guardrails,
            model: input.model,
            allocation: input.allocation.unwrap_or_default(),
            bandit: match input.allocation {
                Some(Allocation::Bandit) => Some(input.bandit.unwrap_or_default()),
                _ => input.bandit,
            },
            guardrail_stop: None,
            winner: None,
            version: 1,
            created_at: now,
            updated_at: now,
            started_at: None,
            completed_at: None,
            key: input.key,
        };
        experiment.check()?;
        Ok(experiment)
    }

    /// This experiment with `patch` applied, validated. Fields that steer
    /// hashing (salt, bucketing, layer) and the variants' keys may change
    /// only in `draft`, so a running experiment never reshuffles its units.
    /// Weights and coverage may change while it runs or is paused: each
    /// change starts a new [`Phase`] whose layout moves as little bucket
    /// space as possible, and units already exposed keep their variant.
    /// The patch is checked before the status: a change no experiment
    /// could take is refused as such (422), whatever this one's status.
    pub fn patched(&self, patch: ExperimentPatch, now: OffsetDateTime) -> Result<Self> {
        let mut draft_only = None;
        let mut next = self.clone();
        let started = matches!(self.status, Status::Running | Status::Paused);
        if let Some(bucketing) = patch.bucketing {
            draft_only.get_or_insert("bucketing");
            next.bucketing = bucketing;
        }
        if let Some(variants) = patch.variants {
            if started {
                next.reweigh(variants)?;
            } else {
                draft_only.get_or_insert("variants");
                next.variants = weighed(variants, next.bucketing)?;
            }
        } else if next.bucketing != self.bucketing {
            next.variants = weighed(next.variants, next.bucketing)?;
        }
        if let Some(salt) = patch.salt {
            draft_only.get_or_insert("salt");
            next.salt = salt;
        }
        if let Some(layer) = patch.layer {
            draft_only.get_or_insert("layer");
            next.layer = layer;
        }
        if let Some(name) = patch.name {
            next.name = name;
        }
        if let Some(description) = patch.description {
            next.description = description;
        }
        if let Some(coverage) = patch.coverage {
            next.coverage = coverage;
            next.peak_coverage = if self.started_at.is_some() {
                self.peak_coverage.max(coverage)
            } else {
                coverage
            };
        }
        if let Some(forced) = patch.forced {
            next.forced = forced;
        }
        if let Some(metrics) = patch.metrics {
            next.metrics = metrics;
        }
        if let Some(primary) = patch.primary_metric {
            next.primary_metric = primary;
        }
        if let Some(alpha) = patch.alpha {
            next.alpha = alpha;
        }
        if let Some(v) = patch.mixing_variance {
            next.mixing_variance = v;
        }
        if let Some(plan) = patch.plan {
            next.plan = plan;
        }
        if let Some(correction) = patch.correction {
            next.correction = correction;
        }
        if let Some(guardrails) = patch.guardrails {
            next.guardrails = guardrails;
        }
        if let Some(model) = patch.model {
            next.model = model;
        }
        if let Some(allocation) = patch.allocation {
            draft_only.get_or_insert("allocation");
            next.allocation = allocation;
            next.bandit = match allocation {
                Allocation::Bandit => Some(next.bandit.unwrap_or_default()),
                Allocation::Fixed => None,
            };
        }
        if let Some(bandit) = patch.bandit {
            next.bandit = Some(bandit);
        }
        next.check()?;
        if self.status == Status::Archived {
            return Err(Error::InvalidTransition {
                from: self.status.as_str(),
                action: "edit",
            });
        }
        if let (Some(field), false) = (draft_only, self.status == Status::Draft) {
            return Err(Error::NotEditable {
                field,
                status: self.status.as_str(),
            });
        }
        let reallocated = next.weights() != self.weights() || next.coverage != self.coverage;
        if started && reallocated {
            next.start_phase(self, now)?;
        }
        next.touch(now);
        Ok(next)
    }

    /// This running bandit with `weights` (in variant order, summing to 1)
    /// as a new phase starting `now`.
    pub fn reallocated(&self, weights: &[f64], now: OffsetDateTime) -> Result<Self> {
        if weights.len() != self.variants.len() {
            return Err(Error::invalid("variants", "one weight per variant"));
        }
        let mut next = self.clone();
        for (v, &w) in next.variants.iter_mut().zip(weights) {
            v.weight = w;
        }
        next.variants = weighed(next.variants, next.bucketing)?;
        next.start_phase(self, now)?;
        next.touch(now);
        Ok(next)
    }

    /// Records the allocation `self` now has (changed from `before`'s) as
    /// a new phase starting `now`.
    fn start_phase(&mut self, before: &Experiment, now: OffsetDateTime) -> Result<()> {
        let mut history = before.phases.clone();
        if history.is_empty() {
            // Started before phases were recorded: its first phase is
            // the allocation it had, from its start.
            let mut first = before.next_phase(&[], before.started_at.unwrap_or(now));
            first.number = 1;
            history.push(first);
        }
        if history.len() >= MAX_PHASES {
            return Err(Error::Reallocation {
                message: format!(
                    "an experiment has at most {MAX_PHASES} phases; this one has them all, \
                     so its weights and coverage stay as they are"
                ),
            });
        }
        let from = before.spans(history.last().unwrap_or_else(|| unreachable!("pushed")));
        self.phases = history;
        let next = self.next_phase(&from, now + PHASE_GRACE);
        self.phases.push(next);
        Ok(())
    }

    /// This experiment after a lifecycle action. `winner` is only meaningful
    /// for [`Action::Complete`] and must name a variant.
    pub fn transitioned(
        &self,
        action: Action,
        winner: Option<VariantKey>,
        now: OffsetDateTime,
    ) -> Result<Self> {
        let mut next = self.clone();
        next.status = self.status.apply(action)?;
        match action {
            Action::Start => {
                next.started_at = Some(now);
                if next.allocation == Allocation::Bandit {
                    // A bandit's burn-in: an equal split.
                    let equal = 1.0 / next.variants.len() as f64;
                    next.variants.iter_mut().for_each(|v| v.weight = equal);
                }
                next.phases = vec![next.next_phase(&[], now)];
            }
            Action::Complete => {
                if let Some(w) = &winner {
                    if self.variant_index(w.as_str()).is_none() {
                        return Err(Error::invalid(
                            "winner",
                            format!("'{w}' is not a variant of this experiment"),
                        ));
                    }
                }
                next.winner = winner;
                next.completed_at = Some(now);
            }
            Action::Pause | Action::Resume | Action::Archive => {}
        }
        next.touch(now);
        Ok(next)
    }

    /// Position of the variant with this key.
    pub fn variant_index(&self, key: &str) -> Option<usize> {
        self.variants.iter().position(|v| v.key.as_str() == key)
    }

    /// Counts a change: bumps the version and the change time.
    pub(crate) fn touch(&mut self, now: OffsetDateTime) {
        self.version += 1;
        self.updated_at = now;
    }

    /// Every rule an experiment obeys, whatever produced it.
    fn check(&self) -> Result<()> {
        let name_chars = self.name.trim().chars().count();
        if name_chars == 0 || self.name.chars().count() > MAX_NAME_CHARS {
            return Err(Error::invalid(
                "name",
                format!("name must be 1-{MAX_NAME_CHARS} characters"),
            ));
        }
        if let Some(d) = &self.description {
            if d.chars().count() > MAX_DESCRIPTION_CHARS {
                return Err(Error::invalid(
                    "description",
                    format!("description must be at most {MAX_DESCRIPTION_CHARS} characters"),
                ));
            }
        }
        if !(self.coverage.is_finite() && (0.0..=1.0).contains(&self.coverage)) {
            return Err(Error::invalid(
                "coverage",
                "coverage must be between 0 and 1",
            ));
        }
        check_hash_key("salt", &self.salt)?;
        if let Bucketing::Growthbook { hash_version } = self.bucketing {
            if !(1..=2).contains(&hash_version) {
                return Err(Error::invalid(
                    "bucketing.hash_version",
                    "GrowthBook's hash version is 1 or 2",
                ));
            }
        }
        if let Some(layer) = &self.layer {
            check_hash_key("layer.key", &layer.key)?;
            let in_unit = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
            if !(in_unit(layer.start) && in_unit(layer.end) && layer.start < layer.end) {
                return Err(Error::invalid("layer", "layer needs 0 <= start < end <= 1"));
            }
        }
        if self.forced.len() > MAX_FORCED {
            return Err(Error::invalid(
                "forced",
                format!("at most {MAX_FORCED} forced overrides"),
            ));
        }
        for (unit, variant) in &self.forced {
            if self.variant_index(variant.as_str()).is_none() {
                return Err(Error::invalid(
                    format!("forced.{unit}"),
                    format!("'{variant}' is not a variant of this experiment"),
                ));
            }
        }
        if self.metrics.len() > MAX_METRICS {
            return Err(Error::invalid(
                "metrics",
                format!("at most {MAX_METRICS} metrics"),
            ));
        }
        let mut seen = HashSet::new();
        for (i, m) in self.metrics.iter().enumerate() {
            m.check(i)?;
            if !seen.insert(m.key.clone()) {
                return Err(Error::invalid(
                    format!("metrics[{i}].key"),
                    format!("metric '{}' is listed twice", m.key),
                ));
            }
            let key = m.key.as_str();
            if self.model.is_some() && (key == MODEL_DERIVATION || key.starts_with("model_")) {
                return Err(Error::invalid(
                    format!("metrics[{i}].key"),
                    "in a model experiment, 'model' and keys starting with 'model_' are the \
                     model metrics' own",
                ));
            }
        }
        if let Some(model) = &self.model {
            model.check()?;
            seen.extend(model.metrics().into_iter().map(|m| m.key));
        }
        if let Some(primary) = &self.primary_metric {
            if !seen.contains(primary) {
                return Err(Error::invalid(
                    "primary_metric",
                    format!("'{primary}' is not one of the experiment's metrics"),
                ));
            }
        }
        match (self.allocation, &self.bandit) {
            (Allocation::Fixed, None) => {}
            (Allocation::Fixed, Some(_)) => {
                return Err(Error::invalid(
                    "bandit",
                    "bandit settings need allocation: bandit",
                ))
            }
            (Allocation::Bandit, _) if self.bucketing != Bucketing::Abacus => {
                return Err(Error::invalid(
                    "allocation",
                    "a bandit changes its weights, which GrowthBook bucketing cannot follow",
                ))
            }
            (Allocation::Bandit, spec) => spec.unwrap_or_default().check(self)?,
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(Error::invalid(
                "alpha",
                "alpha must be between 0 and 1, exclusive",
            ));
        }
        let mut guarded = HashSet::new();
        for (i, g) in self.guardrails.iter().enumerate() {
            if !seen.contains(&g.metric) {
                return Err(Error::invalid(
                    format!("guardrails[{i}].metric"),
                    format!("'{}' is not one of the experiment's metrics", g.metric),
                ));
            }
            if !guarded.insert(&g.metric) {
                return Err(Error::invalid(
                    format!("guardrails[{i}].metric"),
                    format!("metric '{}' is guarded twice", g.metric),
                ));
            }
            if !(g.max_relative_drop.is_finite() && (0.0..1.0).contains(&g.max_relative_drop)) {
                return Err(Error::invalid(
                    format!("guardrails[{i}].max_relative_drop"),
                    "max_relative_drop must be at least 0 and below 1",
                ));
            }
        }
        if let Some(v) = self.mixing_variance {
            if !(v.is_finite() && v > 0.0 && v <= MAX_MIXING_VARIANCE) {
                return Err(Error::invalid(
                    "mixing_variance",
                    format!("mixing_variance must be above 0 and at most {MAX_MIXING_VARIANCE}"),
                ));
            }
        }
        if let Some(plan) = &self.plan {
            plan.check()?;
        }
        for (i, m) in self.metrics.iter().enumerate() {
            if let Some(mde) = m.mde {
                check_mde(&format!("metrics[{i}].mde"), mde)?;
            }
        }
        Ok(())
    }
}

/// The largest prior variance of the relative lift: a standard deviation of
/// 1,000% is already far beyond any real effect.
const MAX_MIXING_VARIANCE: f64 = 100.0;

/// The mixing variance of experiments stored before it could be tuned
/// (and before it could be set): they keep it.
pub(super) fn legacy_mixing_variance() -> Option<f64> {
    Some(0.01)
}

/// What a team planned for an experiment: the always-valid p-value is
/// tuned to it (docs/statistics.md, "Tuning to the plan"), and the
/// sample-size endpoint answers how much each test can tell at it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The units per variant the experiment is expected to reach (from
    /// `GET /v1/stats/sample-size`, or the traffic it will get).
    #[serde(default)]
    #[schema(minimum = 2, maximum = 1_000_000_000_000_u64)]
    pub units_per_variant: Option<u64>,
    /// The smallest relative lift worth detecting (0.05 = 5%), used when
    /// `units_per_variant` is not given; a metric's own `mde` wins.
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 10.0)]
    pub mde: Option<f64>,
}

impl Plan {
    fn check(&self) -> Result<()> {
        if let Some(n) = self.units_per_variant {
            if !(2..=MAX_PLANNED_UNITS).contains(&n) {
                return Err(Error::invalid(
                    "plan.units_per_variant",
                    format!("plan.units_per_variant must be 2 to {MAX_PLANNED_UNITS}"),
                ));
            }
        }
        if let Some(mde) = self.mde {
            check_mde("plan.mde", mde)?;
        }
        Ok(())
    }
}

/// Most planned units per variant.
const MAX_PLANNED_UNITS: u64 = 1_000_000_000_000;

fn check_mde(field: &str, mde: f64) -> Result<()> {
    if mde.is_finite() && mde > 0.0 && mde <= 10.0 {
        return Ok(());
    }
    Err(Error::invalid(
        field,
        format!("{field} must be a relative lift above 0 and at most 10"),
    ))
}

fn check_hash_key(field: &str, value: &str) -> Result<()> {
    if check_printable(value, MAX_SALT_CHARS).is_err() {
        return Err(Error::invalid(
            field,
            format!("{field} must be 1-{MAX_SALT_CHARS} characters without control characters"),
        ));
    }
    Ok(())
}

/// The smallest share of traffic a variant may have once weights are
/// normalised: one unit in a billion, far above f64's resolution of the
/// bucket space (2^-32), so every variant's range is non-empty.
const MIN_NORMALISED_WEIGHT: f64 = 1e-9;

/// The variants' weights as `bucketing` uses them: scaled to sum 1 for
/// abacus's scheme; for GrowthBook's, kept as given, which must sum to 1
/// within GrowthBook's tolerance (it splits evenly otherwise, which would
/// not be the split asked for).
fn weighed(variants: Vec<Variant>, bucketing: Bucketing) -> Result<Vec<Variant>> {
    let Bucketing::Growthbook { .. } = bucketing else {
        return normalised(variants);
    };
    let total: f64 = variants.iter().map(|v| v.weight).sum();
    let as_given = variants.clone();
    normalised(variants)?;
    if !(0.99..=1.01).contains(&total) {
        return Err(Error::invalid(
            "variants",
            format!(
                "GrowthBook bucketing takes weights as given: they must sum to 1 \
                 (between 0.99 and 1.01), not {total}"
            ),
        ));
    }
    Ok(as_given)
}

/// Checks count, key uniqueness and weights, and scales weights to sum 1.
fn normalised(mut variants: Vec<Variant>) -> Result<Vec<Variant>> {
    if !(2..=MAX_VARIANTS).contains(&variants.len()) {
        return Err(Error::invalid(
            "variants",
            format!(
                "an experiment needs 2 to {MAX_VARIANTS} variants, got {}",
                variants.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (i, v) in variants.iter().enumerate() {
        if !seen.insert(&v.key) {
            return Err(Error::invalid(
                format!("variants[{i}].key"),
                format!("variant key '{}' is used twice", v.key),
            ));
        }
        if !(v.weight.is_finite() && v.weight > 0.0) {
            return Err(Error::invalid(
                format!("variants[{i}].weight"),
                "weight must be a finite number greater than 0",
            ));
        }
    }
    let total: f64 = variants.iter().map(|v| v.weight).sum();
    if !total.is_finite() {
        return Err(Error::invalid(
            "variants",
            "weights are too large to add up",
        ));
    }
    for (i, v) in variants.iter_mut().enumerate() {
        v.weight /= total;
        // A weight far smaller than its neighbours (1e-320 beside 1e300)
        // normalises to 0 or to a subnormal: its range would be empty and
        // the weights would no longer describe the split. Refuse it.
        if !(v.weight.is_normal() && v.weight >= MIN_NORMALISED_WEIGHT) {
            return Err(Error::invalid(
                format!("variants[{i}].weight"),
                format!(
                    "weight is too small next to the others: each variant needs at least \
                     {MIN_NORMALISED_WEIGHT} of the traffic"
                ),
            ));
        }
    }
    Ok(variants)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    fn input(body: Value) -> ExperimentIn {
        serde_json::from_value(body).expect("well-formed input")
    }

    fn minimal() -> Value {
        json!({
            "key": "cta",
            "name": "CTA colour",
            "variants": [{"key": "control", "weight": 1}, {"key": "green", "weight": 3}]
        })
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::Invalid { field, .. } => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn create_fills_defaults_and_normalises_weights() {
        let e = Experiment::create(input(minimal()), now()).unwrap();
        assert_eq!(e.status, Status::Draft);
        assert_eq!(e.salt, "cta");
        assert_eq!(e.coverage, 1.0);
        assert_eq!(e.alpha, 0.05);
        assert_eq!(e.variants[0].weight, 0.25);
        assert_eq!(e.variants[1].weight, 0.75);
    }

    #[test]
    fn bad_variants_are_refused_with_the_field() {
        let cases = [
            (json!([{"key": "a", "weight": 1}]), "variants"),
            (
                json!([{"key": "a", "weight": 1}, {"key": "a", "weight": 1}]),
                "variants[1].key",
            ),
            (
                json!([{"key": "a", "weight": 1}, {"key": "b", "weight": 0}]),
                "variants[1].weight",
            ),
            (
                json!([{"key": "a", "weight": -1}, {"key": "b", "weight": 1}]),
                "variants[0].weight",
            ),
            (
                json!([{"key": "a", "weight": 1e-320}, {"key": "b", "weight": 1e300}]),
                "variants[0].weight",
            ),
            (
                json!([{"key": "a", "weight": 1.5e308}, {"key": "b", "weight": 1.5e308}]),
                "variants",
            ),
        ];
        for (variants, field) in cases {
            let mut body = minimal();
            body["variants"] = variants;
            let err = Experiment::create(input(body), now()).unwrap_err();
            assert_eq!(field_of(err), field);
        }
        let mut body = minimal();
        body["variants"] = Value::Array(
            (0..21)
                .map(|i| json!({"key": format!("v{i}"), "weight": 1}))
                .collect(),
        );
        assert_eq!(
            field_of(Experiment::create(input(body), now()).unwrap_err()),
            "variants"
        );
    }

    #[test]
    fn other_rules_are_enforced() {
        let cases = [
            ("coverage", json!(1.5), "coverage"),
            ("alpha", json!(0), "alpha"),
            ("name", json!("  "), "name"),
            ("salt", json!(""), "salt"),
            (
                "layer",
                json!({"key": "l", "start": 0.5, "end": 0.5}),
                "layer",
            ),
            ("forced", json!({"alice": "blue"}), "forced.alice"),
            (
                "metrics",
                json!([{"key": "c", "kind": "binomial"}, {"key": "c", "kind": "mean"}]),
                "metrics[1].key",
            ),
            ("primary_metric", json!("revenue"), "primary_metric"),
        ];
        for (key, value, field) in cases {
            let mut body = minimal();
            body[key] = value;
            let err = Experiment::create(input(body), now()).unwrap_err();
            assert_eq!(field_of(err), field, "{key}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut body = minimal();
        body["colour"] = json!("red");
        assert!(serde_json::from_value::<ExperimentIn>(body).is_err());
    }

    #[test]
    fn assignment_fields_are_frozen_once_started() {
        let draft = Experiment::create(input(minimal()), now()).unwrap();
        let patch: ExperimentPatch = serde_json::from_value(json!({"salt": "new"})).unwrap();
        assert_eq!(draft.patched(patch.clone(), now()).unwrap().salt, "new");

        let running = draft.transitioned(Action::Start, None, now()).unwrap();
        let err = running.patched(patch, now()).unwrap_err();
        assert!(matches!(err, Error::NotEditable { field: "salt", .. }));

        let coverage: ExperimentPatch =
            serde_json::from_value(json!({"coverage": 0.5, "description": "half"})).unwrap();
        let patched = running.patched(coverage, now()).unwrap();
        assert_eq!(patched.coverage, 0.5);
        assert_eq!(patched.description.as_deref(), Some("half"));
        assert_eq!(patched.version, running.version + 1);
    }

    #[test]
    fn null_clears_and_absent_keeps() {
        let mut body = minimal();
        body["description"] = json!("d");
        let e = Experiment::create(input(body), now()).unwrap();
        let keep: ExperimentPatch = serde_json::from_value(json!({"name": "n"})).unwrap();
        assert_eq!(
            e.patched(keep, now()).unwrap().description.as_deref(),
            Some("d")
        );
        let clear: ExperimentPatch = serde_json::from_value(json!({"description": null})).unwrap();
        assert_eq!(e.patched(clear, now()).unwrap().description, None);
    }

    #[test]
    fn completing_checks_the_winner() {
        let running = Experiment::create(input(minimal()), now())
            .unwrap()
            .transitioned(Action::Start, None, now())
            .unwrap();
        let bad = VariantKey::try_from("purple").unwrap();
        assert_eq!(
            field_of(
                running
                    .transitioned(Action::Complete, Some(bad), now())
                    .unwrap_err()
            ),
            "winner"
        );
        let green = VariantKey::try_from("green").unwrap();
        let done = running
            .transitioned(Action::Complete, Some(green.clone()), now())
            .unwrap();
        assert_eq!(done.winner, Some(green));
        assert!(done.completed_at.is_some());
    }

    #[test]
    fn archived_experiments_cannot_be_edited() {
        let archived = Experiment::create(input(minimal()), now())
            .unwrap()
            .transitioned(Action::Archive, None, now())
            .unwrap();
        let err = archived
            .patched(ExperimentPatch::default(), now())
            .unwrap_err();
        assert!(matches!(err, Error::InvalidTransition { .. }));
        // A change no experiment could take is refused as such first.
        let blank = ExperimentPatch {
            name: Some(" ".into()),
            ..ExperimentPatch::default()
        };
        let err = archived.patched(blank, now()).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn draft_only_fields_are_refused_once_running_after_the_rules() {
        let running = Experiment::create(input(minimal()), now())
            .unwrap()
            .transitioned(Action::Start, None, now())
            .unwrap();
        let salt = ExperimentPatch {
            salt: Some("new".into()),
            ..ExperimentPatch::default()
        };
        let err = running.patched(salt, now()).unwrap_err();
        assert!(
            matches!(err, Error::NotEditable { field: "salt", .. }),
            "{err:?}"
        );
        let bad_salt = ExperimentPatch {
            salt: Some(String::new()),
            ..ExperimentPatch::default()
        };
        let err = running.patched(bad_salt, now()).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn layer_slices_overlap_only_within_one_layer_and_range() {
        let slice = |key: &str, start, end| Layer {
            key: key.into(),
            start,
            end,
        };
        let left = slice("l", 0.0, 0.5);
        assert!(left.overlaps(&slice("l", 0.4, 0.6)));
        assert!(left.overlaps(&slice("l", 0.1, 0.2)));
        assert!(!left.overlaps(&slice("l", 0.5, 1.0)), "touching ends");
        assert!(!left.overlaps(&slice("m", 0.0, 0.5)), "another layer");
    }

    proptest::proptest! {
        /// Whatever a client sends to create or patch, the decoder and the
        /// rules either refuse it or yield an experiment whose every number
        /// is finite and in range, with weights that still sum to 1.
        #[test]
        fn arbitrary_experiments_never_panic_and_accepted_ones_are_sound(
            fields in crate::domain::arbitrary::object_with(&[
                "name", "description", "coverage", "salt", "alpha", "mixing_variance",
                "correction", "primary_metric", "forced", "layer", "metrics", "guardrails", "extra",
            ]),
            weights in proptest::collection::vec(crate::domain::arbitrary::number(), 0..5),
            patch in crate::domain::arbitrary::object_with(&[
                "name", "coverage", "alpha", "variants", "salt", "mixing_variance", "forced",
                "correction",
            ]),
        ) {
            let mut body = minimal();
            for (k, v) in fields.as_object().into_iter().flatten() {
                body[k] = v.clone();
            }
            if weights.len() >= 2 {
                let variants: Vec<Value> = weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| json!({"key": format!("v{i}"), "weight": w}))
                    .collect();
                body["variants"] = json!(variants);
            }
            let sound = |e: &Experiment| {
                let total: f64 = e.variants.iter().map(|v| v.weight).sum();
                (total - 1.0).abs() < 1e-9
                    && e.variants.iter().all(|v| v.weight.is_normal() && v.weight > 0.0)
                    && (0.0..=1.0).contains(&e.coverage)
                    && e.alpha > 0.0 && e.alpha < 1.0
                    && e.mixing_variance.is_none_or(|v| v.is_finite() && v > 0.0)
            };
            let Ok(input) = serde_json::from_value::<ExperimentIn>(body) else {
                return Ok(());
            };
            let Ok(created) = Experiment::create(input, now()) else {
                return Ok(());
            };
            proptest::prop_assert!(sound(&created), "{created:?}");
            if let Ok(patch) = serde_json::from_value::<ExperimentPatch>(patch) {
                if let Ok(next) = created.patched(patch, now()) {
                    proptest::prop_assert!(sound(&next), "{next:?}");
                }
            }
        }
    }
}
