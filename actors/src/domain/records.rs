//! Records: what the store keeps, as distinct from what the API shows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::experiment::default_mixing_variance;
use super::{
    Experiment, ExperimentKey, Guardrail, GuardrailStop, Layer, Metric, MetricKey, Status, UnitId,
    Variant, VariantKey,
};

/// An experiment as the `experiments` column family stores it (JSON after
/// the version byte). Deliberately its own type: the API body
/// ([`Experiment`]) can change without changing what is on disk, and the
/// disk format can evolve (a new version, a renamed field) behind the two
/// conversions below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRecord {
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
    /// Hash salt; defaults to the key.
    pub salt: String,
    /// Mutually exclusive layer this experiment occupies a slice of.
    pub layer: Option<Layer>,
    /// Units pinned to a variant, for QA. They win over everything else.
    pub forced: BTreeMap<UnitId, VariantKey>,
    /// Metrics analysed for this experiment.
    pub metrics: Vec<Metric>,
    /// The metric that decides the experiment.
    pub primary_metric: Option<MetricKey>,
    /// Significance level.
    pub alpha: f64,
    /// Variance of the normal mixture the always-valid (mSPRT) p-value puts
    /// over the relative lift: about the square of the lift you expect
    /// (0.01 = effects around 10%).
    #[serde(default = "default_mixing_variance")]
    pub mixing_variance: f64,
    /// When the primary metric first became significant (Holm-corrected
    /// always-valid p-value below alpha); recorded once.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub significant_at: Option<OffsetDateTime>,
    /// When a sample-ratio mismatch was first detected; recorded once.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub srm_detected_at: Option<OffsetDateTime>,
    /// Metrics that must not get worse; see [`Guardrail`].
    #[serde(default)]
    pub guardrails: Vec<Guardrail>,
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
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When it was first started.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When it was completed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
}

impl From<&Experiment> for ExperimentRecord {
    fn from(e: &Experiment) -> Self {
        Self {
            key: e.key.clone(),
            name: e.name.clone(),
            description: e.description.clone(),
            status: e.status,
            variants: e.variants.clone(),
            coverage: e.coverage,
            salt: e.salt.clone(),
            layer: e.layer.clone(),
            forced: e.forced.clone(),
            metrics: e.metrics.clone(),
            primary_metric: e.primary_metric.clone(),
            alpha: e.alpha,
            mixing_variance: e.mixing_variance,
            significant_at: e.significant_at,
            srm_detected_at: e.srm_detected_at,
            guardrails: e.guardrails.clone(),
            guardrail_stop: e.guardrail_stop.clone(),
            winner: e.winner.clone(),
            version: e.version,
            created_at: e.created_at,
            updated_at: e.updated_at,
            started_at: e.started_at,
            completed_at: e.completed_at,
        }
    }
}

impl From<ExperimentRecord> for Experiment {
    fn from(r: ExperimentRecord) -> Self {
        Self {
            key: r.key,
            name: r.name,
            description: r.description,
            status: r.status,
            variants: r.variants,
            coverage: r.coverage,
            salt: r.salt,
            layer: r.layer,
            forced: r.forced,
            metrics: r.metrics,
            primary_metric: r.primary_metric,
            alpha: r.alpha,
            mixing_variance: r.mixing_variance,
            significant_at: r.significant_at,
            srm_detected_at: r.srm_detected_at,
            guardrails: r.guardrails,
            guardrail_stop: r.guardrail_stop,
            winner: r.winner,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            started_at: r.started_at,
            completed_at: r.completed_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ExperimentIn;

    #[test]
    fn an_experiment_survives_its_record() {
        let input: ExperimentIn = serde_json::from_value(serde_json::json!({
            "key": "e", "name": "E",
            "variants": [{"key": "a", "weight": 1, "payload": {"x": 1}}, {"key": "b", "weight": 3}],
            "metrics": [{"key": "buy", "kind": "binomial"}],
            "guardrails": [{"metric": "buy", "max_relative_drop": 0.1}],
            "forced": {"qa": "b"},
        }))
        .expect("input");
        let experiment = Experiment::create(input, OffsetDateTime::UNIX_EPOCH).expect("valid");
        let json = serde_json::to_vec(&ExperimentRecord::from(&experiment)).expect("encode");
        let back: ExperimentRecord = serde_json::from_slice(&json).expect("decode");
        assert_eq!(Experiment::from(back), experiment);
    }

    /// A record written before `mixing_variance`, `guardrails` and the
    /// findings existed still opens: the store never has to be rewritten
    /// for a field added since.
    #[test]
    fn an_older_record_without_later_fields_decodes() {
        let old = r#"{"key":"e","name":"E","description":null,"status":"draft",
            "variants":[{"key":"a","weight":0.5},{"key":"b","weight":0.5}],"coverage":1.0,
            "salt":"e","layer":null,"forced":{},"metrics":[],"primary_metric":null,"alpha":0.05,
            "winner":null,"version":1,"created_at":"2026-01-01T00:00:00Z",
            "updated_at":"2026-01-01T00:00:00Z","started_at":null,"completed_at":null}"#;
        let record: ExperimentRecord = serde_json::from_str(old).expect("decodes");
        let experiment = Experiment::from(record);
        assert!(experiment.guardrails.is_empty() && experiment.guardrail_stop.is_none());
        assert_eq!(experiment.mixing_variance, default_mixing_variance());
    }
}
