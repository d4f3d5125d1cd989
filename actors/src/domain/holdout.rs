//! Holdouts (`docs/assignment.md`, "Holdouts"): a fraction of all units,
//! chosen by hash with the holdout's own salt, kept out of a set of
//! experiments (or all) to measure what everything shipped does together.
//!
//! A held-out unit gets each covered experiment's control (its winner is
//! never served to it either) with reason `holdout`, and is not exposed to
//! the experiment. Instead each assignment of a covered experiment exposes
//! the unit to the holdout itself, as an experiment of two variants:
//! `holdout` (the held-out units) and `exposed` (everyone else), so the
//! holdout's metrics are counted like any experiment's and its results are
//! an experiment's results: `exposed` against `holdout`.

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use super::{Action, Experiment, ExperimentIn, ExperimentKey, Metric, MetricKind, VariantKey};
use crate::{Error, Result};

crate::objects_only!(HoldoutIn);

/// The largest share of units a holdout may keep.
pub const MAX_HOLDOUT_FRACTION: f64 = 0.5;
/// The smallest: a thousandth (smaller holds too few units to measure).
pub const MIN_HOLDOUT_FRACTION: f64 = 0.001;
/// Most experiments one holdout may name.
pub const MAX_HOLDOUT_EXPERIMENTS: usize = 1000;
/// The holdout's variant of held-out units.
pub const HELD_OUT: &str = "holdout";
/// The holdout's variant of every other unit.
pub const EXPOSED: &str = "exposed";

/// A holdout as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Holdout {
    /// Unique key, shared with the experiments' keys.
    pub key: ExperimentKey,
    /// Display name.
    pub name: String,
    /// The share of units held out, 0.001 to 0.5.
    pub fraction: f64,
    /// The salt of its hash; by default `holdout:{key}`.
    pub salt: String,
    /// The experiments it holds units out of; absent: every experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiments: Option<Vec<ExperimentKey>>,
    /// What its results compare (binomial or mean, uncapped).
    pub metrics: Vec<Metric>,
    /// When it was created (and started holding units out).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When it was ended (`DELETE`): its units are served as everyone
    /// else since, and its results stay readable.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<OffsetDateTime>,
}

/// Body of `POST /v1/holdouts`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct HoldoutIn {
    /// Unique key (`[a-z0-9_-]{1,64}`), no experiment's.
    pub key: ExperimentKey,
    /// Display name, 1-200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// The share of units held out, 0.001 to 0.5.
    #[schema(minimum = 0.001, maximum = 0.5)]
    pub fraction: f64,
    /// The salt; `holdout:{key}` when absent.
    #[serde(default)]
    pub salt: Option<String>,
    /// The experiments it covers; every experiment when absent.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub experiments: Option<Vec<ExperimentKey>>,
    /// What its results compare: binomial or mean metrics, uncapped, at
    /// most 50 (a longer list is refused with 422).
    #[serde(default)]
    pub metrics: Vec<Metric>,
}

impl Holdout {
    /// A holdout from a create request, validated.
    pub fn create(input: HoldoutIn, now: OffsetDateTime) -> Result<Self> {
        let name_chars = input.name.trim().chars().count();
        if name_chars == 0 || input.name.chars().count() > 200 {
            return Err(Error::invalid("name", "name must be 1-200 characters"));
        }
        if !(input.fraction.is_finite()
            && (MIN_HOLDOUT_FRACTION..=MAX_HOLDOUT_FRACTION).contains(&input.fraction))
        {
            return Err(Error::invalid(
                "fraction",
                format!("fraction must be {MIN_HOLDOUT_FRACTION} to {MAX_HOLDOUT_FRACTION}"),
            ));
        }
        if input
            .experiments
            .as_ref()
            .is_some_and(|e| e.is_empty() || e.len() > MAX_HOLDOUT_EXPERIMENTS)
        {
            return Err(Error::invalid(
                "experiments",
                format!(
                    "1 to {MAX_HOLDOUT_EXPERIMENTS} experiment keys, or absent for every experiment"
                ),
            ));
        }
        for (i, m) in input.metrics.iter().enumerate() {
            let plain = matches!(m.kind, MetricKind::Binomial | MetricKind::Mean)
                && m.derivation().is_none();
            if !plain {
                return Err(Error::invalid(
                    format!("metrics[{i}]"),
                    "a holdout compares binomial or mean metrics, without cap, CUPED or denominator",
                ));
            }
        }
        let holdout = Self {
            salt: input
                .salt
                .unwrap_or_else(|| format!("holdout:{}", input.key)),
            key: input.key,
            name: input.name,
            fraction: input.fraction,
            experiments: input.experiments,
            metrics: input.metrics,
            created_at: now,
            ended_at: None,
        };
        // Its metrics obey every rule an experiment's do.
        holdout.as_experiment()?;
        Ok(holdout)
    }

    /// Whether it holds units out of `experiment`.
    pub fn covers(&self, experiment: &str) -> bool {
        self.experiments
            .as_ref()
            .is_none_or(|keys| keys.iter().any(|k| k.as_str() == experiment))
    }

    /// The key of its variant for a unit held out or not.
    pub fn variant(held: bool) -> VariantKey {
        VariantKey::builtin(if held { HELD_OUT } else { EXPOSED })
    }

    /// The experiment its results are read as: `holdout` (the control,
    /// weighed by the fraction) against `exposed`, running since it was
    /// created, with its metrics.
    pub fn as_experiment(&self) -> Result<Experiment> {
        let input: ExperimentIn = serde_json::from_value(json!({
            "key": self.key,
            "name": self.name,
            "variants": [
                {"key": HELD_OUT, "weight": self.fraction},
                {"key": EXPOSED, "weight": 1.0 - self.fraction},
            ],
            "metrics": self.metrics,
        }))
        .map_err(|e| Error::invalid("metrics", e.to_string()))?;
        Experiment::create(input, self.created_at)?.transitioned(
            Action::Start,
            None,
            self.created_at,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(body: serde_json::Value) -> HoldoutIn {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_holdout_is_read_as_an_experiment_of_holdout_against_exposed() {
        let h = Holdout::create(
            input(json!({"key": "q4", "name": "Q4", "fraction": 0.1})),
            OffsetDateTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(h.salt, "holdout:q4");
        assert!(h.covers("anything"));
        let e = h.as_experiment().unwrap();
        assert_eq!(e.variants[0].key.as_str(), HELD_OUT);
        assert!((e.variants[0].weight - 0.1).abs() < 1e-12);
    }

    #[test]
    fn bad_holdouts_are_refused_by_field() {
        let refused = |body: serde_json::Value| match Holdout::create(
            input(body),
            OffsetDateTime::UNIX_EPOCH,
        ) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(json!({"key": "h", "name": "h", "fraction": 0.6})),
            "fraction"
        );
        assert_eq!(
            refused(json!({"key": "h", "name": "h", "fraction": 0.0})),
            "fraction"
        );
        assert_eq!(
            refused(json!({"key": "h", "name": " ", "fraction": 0.1})),
            "name"
        );
        assert_eq!(
            refused(json!({"key": "h", "name": "h", "fraction": 0.1, "experiments": []})),
            "experiments"
        );
        assert_eq!(
            refused(json!({"key": "h", "name": "h", "fraction": 0.1,
                "metrics": [{"key": "rev", "kind": "mean", "cap": 10}]})),
            "metrics[0]"
        );
    }
}
