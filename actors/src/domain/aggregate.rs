//! Aggregates: what the units of each variant did, summed so that results
//! never scan raw events.
//!
//! Everything is kept per *measure*: an event type, or a `metric` event's
//! name. A metric `{key: K}` of an experiment reads the measure `K`, so a
//! metric added after the experiment started already has its history.
//! Per unit, only the unit's own running sum is kept ([`UnitMeasure`]);
//! the per-variant totals carry the sum of squares of those per-unit sums,
//! which is all a mean metric's variance needs.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

/// One experiment's aggregates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ExperimentAggregates {
    /// By variant key.
    pub variants: BTreeMap<String, VariantAggregates>,
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
    /// saturate at `±f64::MAX`, like the aggregator's.
    pub fn add(&mut self, other: &ExperimentAggregates) {
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
