//! Aggregates: what the units of each variant did, summed so that results
//! never scan raw events.
//!
//! Everything is kept per *measure*: an event type, or a `metric` event's
//! name. A metric `{key: K}` of an experiment reads the measure `K`, so a
//! metric added after the experiment started already has its history.
//! Per unit, only the unit's own running sum is kept ([`UnitMeasure`]);
//! the per-variant totals carry the sum of squares of those per-unit sums,
//! which is all a mean metric's variance needs.
//!
//! A capped or ratio metric needs more: sums of each unit's capped value
//! and of the product of its numerator and denominator ([`DerivedSums`]).
//! They depend on the metric's definition ([`Derivation`]), so each
//! experiment's aggregates record the definitions they were kept for;
//! when a definition changes, each partition recomputes them from its
//! units' stored running sums (see `ingest/aggregator.rs`, "Derived sums").

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    Event, ModelAggregates, ModelTracking, QuantileOf, QuantileSketch, QuantileSpec,
    MODEL_DERIVATION,
};

/// One experiment's aggregates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ExperimentAggregates {
    /// By variant key.
    pub variants: BTreeMap<String, VariantAggregates>,
    /// By metric key: the definitions the variants' derived sums were kept
    /// for. A metric whose current definition differs is being recomputed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub derived: BTreeMap<String, Derivation>,
}

/// One variant's aggregates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VariantAggregates {
    /// Exposed units: each unit counts once, at its first exposure.
    pub units: u64,
    /// Exposure events, repeats included.
    pub exposures: u64,
    /// Events whose explicit variant differed from abacus's assignment.
    pub assignment_mismatches: u64,
    /// By measure (event type or `metric` name).
    pub measures: BTreeMap<String, MeasureAggregates>,
    /// By metric key, for metrics with a [`Derivation`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub derived: BTreeMap<String, DerivedSums>,
    /// For quantile metrics, by the key of the first quantile metric of
    /// each measure and value read ([`sketch_key`]): the others of it read
    /// the same sketch at their level.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sketches: BTreeMap<String, QuantileSketch>,
    /// A model experiment's calibration and drift figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelAggregates>,
}

/// An experiment's derived metrics, by metric key.
pub type Derivations = BTreeMap<String, Derivation>;

/// What a metric needs kept beyond its measures' plain sums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Derivation {
    /// The measure counted (a ratio's numerator).
    pub measure: String,
    /// Each unit's value counts at most this much.
    pub cap: Option<f64>,
    /// A ratio's denominator measure.
    pub denominator: Option<String>,
    /// CUPED's covariate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariate: Option<Covariate>,
    /// A quantile metric: kept as a [`QuantileSketch`] of event values,
    /// not as sums of unit values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<QuantileSpec>,
    /// A model experiment's tracking (under
    /// [`MODEL_DERIVATION`](super::MODEL_DERIVATION)): kept as
    /// [`ModelAggregates`], not as sums of unit values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelTracking>,
    /// An experiment's phase starts after the first, in ms (under
    /// [`PHASES_DERIVATION`](super::PHASES_DERIVATION)): exposures are
    /// kept by the phase they fall in, not as sums of unit values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Vec<i64>>,
}

/// The key of the sketch a quantile metric of `measure` reading `of` keeps
/// among `all`: the first such metric's, in key order, so that metrics
/// differing only in their level (p50, p95, p99 of one value) share one.
pub fn sketch_of<'a>(all: &'a Derivations, measure: &str, of: QuantileOf) -> Option<&'a str> {
    all.iter()
        .find(|(_, d)| d.measure == measure && d.quantile.is_some_and(|q| q.of == of))
        .map(|(key, _)| key.as_str())
}

/// The key of the sketch the quantile metric `metric` of `all` reads.
pub fn sketch_key<'a>(all: &'a Derivations, metric: &str) -> Option<&'a str> {
    let d = all.get(metric)?;
    sketch_of(all, &d.measure, d.quantile?.of)
}

/// A unit's sum of `measure` over `window_ms` before its first exposure,
/// captured at that exposure (see `ingest/aggregator.rs`, "Covariates").
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct Covariate {
    /// The measure summed.
    pub measure: String,
    /// How far before the exposure events count, in milliseconds.
    pub window_ms: i64,
}

impl Covariate {
    /// The key the captured value is kept under among the unit's
    /// [`UnitMeasure`]s: `{measure}@pre{window_ms}`, which no measure can
    /// be (measure names are `[a-z0-9_-]`).
    pub fn key(&self) -> String {
        format!("{}@pre{}", self.measure, self.window_ms)
    }

    /// Whether `key` is any covariate's [`Covariate::key`]: measure keys
    /// are metric keys, whose alphabet has no `@`.
    pub fn is_any_key(key: &str) -> bool {
        key.contains("@pre")
    }

    /// Whether `key` is [`Covariate::key`], without allocating it.
    pub fn is_key(&self, key: &str) -> bool {
        key.strip_prefix(self.measure.as_str())
            .and_then(|rest| rest.strip_prefix("@pre"))
            .is_some_and(|window| window.parse() == Ok(self.window_ms))
    }
}

/// Sums over a variant's exposed units of a metric's per-unit value `x`
/// (the unit's sum of the measure, capped) and, for a ratio, of `x d`
/// with `d` the unit's sum of the denominator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DerivedSums {
    /// Sum of `x`.
    pub sum: f64,
    /// Sum of `x²`.
    pub sum_squares: f64,
    /// Sum of `x d` (ratio metrics; 0 otherwise).
    pub cross: f64,
    /// Units whose value was above the cap (a count, kept as a sum).
    #[serde(default)]
    pub capped: f64,
    /// CUPED: sum of the covariates `c`.
    #[serde(default)]
    pub pre_sum: f64,
    /// Sum of `c²`.
    #[serde(default)]
    pub pre_sum_squares: f64,
    /// Sum of `x c`.
    #[serde(default)]
    pub pre_cross: f64,
}

impl Derivation {
    /// One exposure's terms: its `x`, `x²` and `x d`.
    pub fn terms(&self, exposure: &Exposure) -> DerivedSums {
        let sum_of = |key: &str| {
            exposure
                .measures
                .iter()
                .find(|m| &*m.key == key)
                .map_or(0.0, |m| m.sum)
        };
        let raw = sum_of(&self.measure);
        let x = self.cap.map_or(raw, |cap| raw.min(cap));
        let d = self.denominator.as_deref().map_or(0.0, sum_of);
        // Found without building its key: this runs for every event.
        let c = self.covariate.as_ref().map_or(0.0, |c| {
            exposure
                .measures
                .iter()
                .find(|m| c.is_key(&m.key))
                .map_or(0.0, |m| m.sum)
        });
        DerivedSums {
            sum: x,
            sum_squares: x * x,
            cross: x * d,
            capped: f64::from(u8::from(x < raw)),
            pre_sum: c,
            pre_sum_squares: c * c,
            pre_cross: x * c,
        }
    }

    /// Whether a change to `measure` can change this metric's terms.
    pub fn reads(&self, measure: &str) -> bool {
        self.measure == measure || self.denominator.as_deref() == Some(measure)
    }

    /// Whether it is kept as sums of each unit's terms (capped, ratio and
    /// CUPED metrics), which the units' stored state can recompute; a
    /// quantile sketch or a model's aggregates hold event values instead.
    pub fn sums_units(&self) -> bool {
        self.quantile.is_none() && self.model.is_none() && self.phases.is_none()
    }
}

impl DerivedSums {
    /// Adds `after - before`, saturating like every other sum.
    pub fn shift(&mut self, before: DerivedSums, after: DerivedSums) {
        let step = |total: f64, b: f64, a: f64| finite(total + (finite(a) - finite(b)));
        self.sum = step(self.sum, before.sum, after.sum);
        self.sum_squares = step(self.sum_squares, before.sum_squares, after.sum_squares);
        self.cross = step(self.cross, before.cross, after.cross);
        self.capped = step(self.capped, before.capped, after.capped);
        self.pre_sum = step(self.pre_sum, before.pre_sum, after.pre_sum);
        self.pre_sum_squares = step(
            self.pre_sum_squares,
            before.pre_sum_squares,
            after.pre_sum_squares,
        );
        self.pre_cross = step(self.pre_cross, before.pre_cross, after.pre_cross);
    }
}

/// `x`, or the nearest finite value: sums saturate at `±f64::MAX`, and a
/// NaN (which only `inf - inf` could make) counts as 0.
pub fn finite(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(-f64::MAX, f64::MAX)
    }
}

/// What a variant's exposed units did with one measure, counting only
/// events at or after each unit's first exposure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MeasureAggregates {
    /// Units with at least one counted event (conversions, for a binomial
    /// metric).
    pub units: u64,
    /// Counted events.
    pub events: u64,
    /// Sum over units of each unit's sum of values; an event without a
    /// value counts 1.
    pub sum: f64,
    /// Sum over units of the square of each unit's sum.
    pub sum_squares: f64,
}

impl ExperimentAggregates {
    /// Adds `other`'s counts and sums to these: how the shares of several
    /// ingest partitions, which count disjoint units, make one total. Sums
    /// saturate at `±f64::MAX`, like the aggregator's. A share without
    /// variants adds nothing; a derived metric stays only where every
    /// share with variants kept it for the same definition (a partition
    /// still recomputing it leaves it out until it is done).
    pub fn add(&mut self, other: &ExperimentAggregates) {
        if other.variants.is_empty() {
            return;
        }
        if self.variants.is_empty() {
            self.derived = other.derived.clone();
        } else {
            self.derived
                .retain(|metric, d| other.derived.get(metric) == Some(d));
        }
        for (key, theirs) in &other.variants {
            let ours = self.variants.entry(key.clone()).or_default();
            ours.units = ours.units.saturating_add(theirs.units);
            ours.exposures = ours.exposures.saturating_add(theirs.exposures);
            ours.assignment_mismatches = ours
                .assignment_mismatches
                .saturating_add(theirs.assignment_mismatches);
            for (name, m) in &theirs.measures {
                let sum = ours.measures.entry(name.clone()).or_default();
                sum.units = sum.units.saturating_add(m.units);
                sum.events = sum.events.saturating_add(m.events);
                sum.sum = (sum.sum + m.sum).clamp(-f64::MAX, f64::MAX);
                sum.sum_squares = (sum.sum_squares + m.sum_squares).clamp(-f64::MAX, f64::MAX);
            }
            for (metric, d) in &theirs.derived {
                ours.derived
                    .entry(metric.clone())
                    .or_default()
                    .shift(DerivedSums::default(), *d);
            }
            for (metric, s) in &theirs.sketches {
                ours.sketches.entry(metric.clone()).or_default().merge(s);
            }
            // Model figures add up only where both shares were kept for
            // one model definition (both tasks alike, the same baseline).
            if let (Some(m), true) = (&theirs.model, self.derived.contains_key(MODEL_DERIVATION)) {
                ours.model.get_or_insert_with(Default::default).merge(m);
            }
        }
        if !self.derived.contains_key(MODEL_DERIVATION) {
            self.variants.values_mut().for_each(|v| v.model = None);
        }
    }
}

/// A unit's exposure to one variant of one experiment, and what it has
/// done since. A unit normally has one per experiment; a client that
/// reports several variants for one unit gives it several.
#[derive(Debug, Clone, PartialEq)]
pub struct Exposure {
    /// Experiment key (interned: millions of units share a few keys).
    pub experiment: Arc<str>,
    /// Variant key, interned.
    pub variant: Arc<str>,
    /// Timestamp of the first exposure event; earlier events do not count.
    pub exposed_ms: i64,
    /// Running per-measure sums since then.
    pub measures: Vec<UnitMeasure>,
}

/// One unit's running total of one measure.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitMeasure {
    /// Measure key, interned.
    pub key: Arc<str>,
    /// Events counted.
    pub events: u64,
    /// Sum of their values.
    pub sum: f64,
}

/// What a fold changed, to be written with the batch that caused it.
pub struct AggregateChanges<'a> {
    /// Each changed experiment's aggregates.
    pub experiments: Vec<(&'a str, &'a ExperimentAggregates)>,
    /// Each changed unit: all its exposures.
    pub units: Vec<UnitChange<'a>>,
    /// Open predictions made, and joined ones to forget.
    pub predictions: Vec<PredictionChange<'a>>,
}

/// A model experiment's prediction, open until an outcome joins it.
pub struct PredictionChange<'a> {
    /// Its unit.
    pub unit: &'a str,
    /// Its `prediction_id`.
    pub id: &'a str,
    /// The prediction and when its join window ends (ms since the
    /// epoch); `None` once joined.
    pub open: Option<(&'a Event, i64)>,
}

/// One unit's exposures, across experiments, as persisted.
pub struct UnitChange<'a> {
    /// The unit.
    pub unit: &'a str,
    /// Its exposures.
    pub exposures: &'a [Exposure],
}

#[cfg(test)]
impl ExperimentAggregates {
    /// A control and a treatment `b`: `units` exposed per variant, and
    /// `buyers` of them converted once each on the measure `buy`.
    pub(crate) fn two_arms(units: [u64; 2], buyers: [u64; 2]) -> Self {
        let mut a = Self::default();
        for (i, key) in ["control", "b"].into_iter().enumerate() {
            let mut v = VariantAggregates {
                units: units[i],
                exposures: units[i],
                ..VariantAggregates::default()
            };
            let n = buyers[i];
            v.measures.insert(
                "buy".into(),
                MeasureAggregates {
                    units: n,
                    events: n,
                    sum: n as f64,
                    sum_squares: n as f64,
                },
            );
            a.variants.insert(key.into(), v);
        }
        a
    }
}
