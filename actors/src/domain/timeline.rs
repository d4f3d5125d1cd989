//! An experiment's cumulative figures at one moment, as the timeline keeps
//! them (`timeline` column family), and the values the API draws from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{sketch_key, Experiment, ExperimentAggregates, MetricKind};

/// Cumulative figures of one experiment at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineSnapshot {
    /// Per variant key.
    pub variants: BTreeMap<String, VariantFigures>,
    /// Metrics without figures at that moment: their sums were being
    /// recomputed after a change to their definition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}

/// One variant's cumulative figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VariantFigures {
    /// Exposed units.
    pub units: u64,
    /// Per metric: units with at least one event, and the sum of values
    /// (capped where the metric caps them; a ratio's numerators).
    pub measures: BTreeMap<String, (u64, f64)>,
    /// Per ratio metric: the sum of its denominators.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub denominators: BTreeMap<String, f64>,
    /// Per quantile metric with values: the quantile it tests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quantiles: BTreeMap<String, f64>,
}

impl TimelineSnapshot {
    /// The experiment's metrics from its aggregates.
    pub fn of(experiment: &Experiment, aggregates: &ExperimentAggregates) -> Self {
        // Derived sums kept for another definition are being recomputed.
        let metrics = experiment.analysed_metrics();
        let derivations = experiment.derivations();
        let pending: Vec<String> = metrics
            .iter()
            .filter(|m| {
                m.derivation().is_some_and(|d| {
                    !aggregates.variants.is_empty()
                        && aggregates.derived.get(m.key.as_str()) != Some(&d)
                })
            })
            .map(|m| m.key.to_string())
            .collect();
        let variants = experiment
            .variants
            .iter()
            .map(|v| {
                let a = aggregates.variants.get(v.key.as_str());
                let mut snapshot = VariantFigures {
                    units: a.map_or(0, |a| a.units),
                    ..VariantFigures::default()
                };
                for m in metrics.iter() {
                    let Some(x) = a.and_then(|a| a.measures.get(m.measure())) else {
                        continue;
                    };
                    let key = m.key.to_string();
                    if pending.contains(&key) {
                        continue;
                    }
                    if let Some(q) = m.quantile_spec() {
                        let sketch = sketch_key(&derivations, &key)
                            .and_then(|k| a.and_then(|a| a.sketches.get(k)));
                        if let Some(value) = sketch.and_then(|s| s.quantile(q.level)) {
                            snapshot.quantiles.insert(key.clone(), value);
                        }
                    }
                    let mut sum = x.sum;
                    if m.derivation().is_some() {
                        let derived = a.and_then(|a| a.derived.get(key.as_str()));
                        sum = derived.map_or(0.0, |d| d.sum);
                    }
                    if let Some(d) = &m.denominator {
                        let d = a.and_then(|a| a.measures.get(d.as_str()));
                        snapshot
                            .denominators
                            .insert(key.clone(), d.map_or(0.0, |d| d.sum));
                    }
                    snapshot.measures.insert(key, (x.units, sum));
                }
                (v.key.to_string(), snapshot)
            })
            .collect();
        Self { variants, pending }
    }

    /// Per variant (in the experiment's order): units and the metric's
    /// value (rate or mean per exposed unit; `None` without units).
    pub fn values(&self, experiment: &Experiment, metric: Option<&str>) -> Vec<VariantPoint> {
        let kind = metric
            .filter(|k| !self.pending.iter().any(|p| p == k))
            .and_then(|k| {
                experiment
                    .analysed_metrics()
                    .iter()
                    .find(|m| m.key.as_str() == k)
                    .map(|m| m.kind)
            });
        experiment
            .variants
            .iter()
            .map(|v| {
                let s = self.variants.get(v.key.as_str());
                let units = s.map_or(0, |s| s.units);
                let measure = metric.and_then(|k| s?.measures.get(k)).copied();
                let denominator = metric.and_then(|k| s?.denominators.get(k)).copied();
                let quantile = metric.and_then(|k| s?.quantiles.get(k)).copied();
                let value = match (kind, units) {
                    (None, _) | (_, 0) => None,
                    (Some(MetricKind::Binomial), n) => {
                        Some(measure.map_or(0, |m| m.0) as f64 / n as f64)
                    }
                    (Some(MetricKind::Mean), n) => Some(measure.map_or(0.0, |m| m.1) / n as f64),
                    (Some(MetricKind::Ratio), _) => denominator
                        .filter(|d| *d != 0.0)
                        .map(|d| measure.map_or(0.0, |m| m.1) / d),
                    (Some(MetricKind::Quantile), _) => quantile,
                };
                VariantPoint {
                    variant: v.key.to_string(),
                    units,
                    value,
                }
            })
            .collect()
    }
}

/// One variant at one moment, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VariantPoint {
    /// Variant key.
    pub variant: String,
    /// Exposed units so far.
    pub units: u64,
    /// The metric so far: rate (binomial), mean per unit, ratio, or the
    /// quantile.
    pub value: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ExperimentIn, MeasureAggregates, VariantAggregates};

    #[test]
    fn values_are_rates_or_means_per_exposed_unit() {
        let experiment = Experiment::create(
            serde_json::from_value::<ExperimentIn>(serde_json::json!({
                "key": "e", "name": "e",
                "variants": [{"key": "a", "weight": 1}, {"key": "b", "weight": 1}],
                "metrics": [{"key": "buy", "kind": "binomial"}, {"key": "rev", "kind": "mean"}]
            }))
            .expect("input"),
            time::OffsetDateTime::UNIX_EPOCH,
        )
        .expect("valid");
        let mut aggregates = ExperimentAggregates::default();
        let mut a = VariantAggregates {
            units: 4,
            ..VariantAggregates::default()
        };
        a.measures.insert(
            "buy".into(),
            MeasureAggregates {
                units: 1,
                events: 3,
                sum: 3.0,
                sum_squares: 9.0,
            },
        );
        a.measures.insert(
            "rev".into(),
            MeasureAggregates {
                units: 2,
                events: 2,
                sum: 10.0,
                sum_squares: 50.0,
            },
        );
        aggregates.variants.insert("a".into(), a);
        let snapshot = TimelineSnapshot::of(&experiment, &aggregates);
        let buy = snapshot.values(&experiment, Some("buy"));
        assert_eq!((buy[0].units, buy[0].value), (4, Some(0.25)));
        assert_eq!((buy[1].units, buy[1].value), (0, None));
        let rev = snapshot.values(&experiment, Some("rev"));
        assert_eq!(rev[0].value, Some(2.5));
        assert_eq!(snapshot.values(&experiment, None)[0].value, None);
    }
}
