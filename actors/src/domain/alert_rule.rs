//! Alert rules: which figure to watch, the threshold, how loud.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{ExperimentKey, RuleId};
use crate::{Error, Result};

// Bodies are read from JSON objects only, never from arrays of their
// fields (domain/objects.rs).
crate::objects_only!(RuleIn, RulePatch);

/// Longest window a rate rule may look back over, in seconds.
pub const MAX_WINDOW_S: u32 = 300;
const MAX_NAME_CHARS: usize = 200;

/// How loud an alert is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Look soon.
    Warning,
    /// Something is broken.
    Error,
    /// Act now.
    Critical,
}

/// The figure a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// p95 response time of `POST /v1/events` over the window, in ms,
    /// above `threshold`.
    EventLatencyP95Ms,
    /// Share of HTTP responses that were errors (status >= 400) over the
    /// window, above `threshold` (0..1).
    ErrorRate,
    /// Events refused (invalid, or the mailbox full) over the window, more
    /// than `threshold`.
    IngestRejections,
    /// A running experiment's exposed units deviate from its weights
    /// (chi-square p < 0.001), now.
    Srm,
    /// A running experiment's guardrail metric regressed beyond its
    /// tolerance, by the always-valid p-value, now.
    GuardrailRegression,
    /// A model experiment's variant's predictions drifted from its
    /// baseline: population stability index above `threshold` (0.2 is a
    /// common choice), now.
    PredictionDrift,
    /// A model experiment's variant got worse than in its baseline: its
    /// accuracy dropped, or its log loss (a regressor's MAE) rose, by more
    /// than `threshold` relatively (0.1 = 10%), now.
    ModelQuality,
    /// A webhook subscription is disabled.
    WebhookDisabled,
    /// The event store refused a commit after every retry: events are
    /// refused until restart. Raised by abacus itself (critical, without
    /// a rule); rules cannot watch it.
    StoreFailed,
}

impl AlertMetric {
    /// Whether the rule compares a number against a threshold.
    fn has_threshold(self) -> bool {
        matches!(
            self,
            Self::EventLatencyP95Ms
                | Self::ErrorRate
                | Self::IngestRejections
                | Self::PredictionDrift
                | Self::ModelQuality
        )
    }

    /// Whether the rule is about experiments (and may name one).
    fn per_experiment(self) -> bool {
        matches!(
            self,
            Self::Srm | Self::GuardrailRegression | Self::PredictionDrift | Self::ModelQuality
        )
    }
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AlertRule {
    /// `rule_` and 32 hex digits.
    pub id: RuleId,
    /// Human-readable name, copied onto its alerts.
    pub name: String,
    /// What it watches.
    pub metric: AlertMetric,
    /// Fires above this (rate rules only).
    pub threshold: Option<f64>,
    /// Seconds the rate rules look back over.
    pub window_s: u32,
    /// Only this experiment (experiment rules); `null` = every running one.
    pub experiment: Option<ExperimentKey>,
    /// Severity of its alerts.
    pub severity: Severity,
    /// Disabled rules raise nothing, and their open alerts resolve.
    pub enabled: bool,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// Body of `POST /v1/alerts/rules`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct RuleIn {
    /// Human-readable name: 1-200 characters, not all blank.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: String,
    /// What to watch (any but `store_failed`, which abacus raises itself).
    pub metric: AlertMetric,
    /// At least 0; required for `event_latency_p95_ms` (ms), `error_rate`
    /// (a share below 1) and `ingest_rejections` (events), refused for
    /// the others.
    #[serde(default)]
    #[schema(minimum = 0.0)]
    pub threshold: Option<f64>,
    /// Window of the rate rules, 1..=300 s (default 60).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 300)]
    pub window_s: Option<u32>,
    /// For `srm`, `guardrail_regression`, `prediction_drift` and
    /// `model_quality`: only this experiment.
    #[serde(default)]
    pub experiment: Option<ExperimentKey>,
    /// Default `warning`.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Default `true`.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Body of `PATCH /v1/alerts/rules/{id}`; absent fields stay.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct RulePatch {
    /// New name: 1-200 characters, not all blank.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: Option<String>,
    /// New threshold, at least 0 (only for the rules that have one).
    #[serde(default)]
    #[schema(minimum = 0.0)]
    pub threshold: Option<f64>,
    /// New window, 1..=300 s.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 300)]
    pub window_s: Option<u32>,
    /// New severity.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// Enable or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
}

impl AlertRule {
    /// A new rule from a create request, validated.
    pub fn create(input: RuleIn, now: OffsetDateTime) -> Result<Self> {
        let rule = Self {
            id: RuleId::mint(),
            name: input.name,
            metric: input.metric,
            threshold: input.threshold,
            window_s: input.window_s.unwrap_or(60),
            experiment: input.experiment,
            severity: input.severity.unwrap_or(Severity::Warning),
            enabled: input.enabled.unwrap_or(true),
            created_at: now,
            updated_at: now,
        };
        rule.check()?;
        Ok(rule)
    }

    /// This rule with `patch` applied, validated.
    pub fn patched(&self, patch: RulePatch, now: OffsetDateTime) -> Result<Self> {
        let mut next = self.clone();
        if let Some(name) = patch.name {
            next.name = name;
        }
        if let Some(threshold) = patch.threshold {
            next.threshold = Some(threshold);
        }
        if let Some(window) = patch.window_s {
            next.window_s = window;
        }
        if let Some(severity) = patch.severity {
            next.severity = severity;
        }
        if let Some(enabled) = patch.enabled {
            next.enabled = enabled;
        }
        next.check()?;
        next.updated_at = now;
        Ok(next)
    }

    fn check(&self) -> Result<()> {
        let chars = self.name.trim().chars().count();
        if chars == 0 || self.name.chars().count() > MAX_NAME_CHARS {
            return Err(Error::invalid(
                "name",
                format!("name must be 1-{MAX_NAME_CHARS} characters"),
            ));
        }
        match (self.metric.has_threshold(), self.threshold) {
            (true, None) => {
                return Err(Error::invalid("threshold", "this metric needs a threshold"))
            }
            (false, Some(_)) => {
                return Err(Error::invalid(
                    "threshold",
                    "this metric fires on a condition and takes no threshold",
                ))
            }
            (true, Some(t)) if !t.is_finite() || t < 0.0 => {
                return Err(Error::invalid(
                    "threshold",
                    "threshold must be a finite number >= 0",
                ))
            }
            (true, Some(t)) if self.metric == AlertMetric::ErrorRate && t >= 1.0 => {
                return Err(Error::invalid(
                    "threshold",
                    "an error-rate threshold is a share below 1",
                ))
            }
            _ => {}
        }
        if !(1..=MAX_WINDOW_S).contains(&self.window_s) {
            return Err(Error::invalid(
                "window_s",
                format!("window_s must be 1-{MAX_WINDOW_S}"),
            ));
        }
        if self.metric == AlertMetric::StoreFailed {
            return Err(Error::invalid(
                "metric",
                "store_failed alerts are raised by abacus itself; no rule is needed",
            ));
        }
        if self.experiment.is_some() && !self.metric.per_experiment() {
            return Err(Error::invalid(
                "experiment",
                "only srm, guardrail_regression, prediction_drift and model_quality rules \
                 watch one experiment",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn create(body: serde_json::Value) -> Result<AlertRule> {
        AlertRule::create(
            serde_json::from_value(body).expect("well-formed"),
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    fn field(r: Result<AlertRule>) -> String {
        match r {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_in() {
        let rule =
            create(json!({"name": "slow", "metric": "event_latency_p95_ms", "threshold": 5}))
                .unwrap();
        assert_eq!(
            (rule.window_s, rule.severity, rule.enabled),
            (60, Severity::Warning, true)
        );
        assert!(rule.id.as_str().starts_with("rule_"));
    }

    #[test]
    fn thresholds_belong_to_rate_rules_only() {
        assert_eq!(
            field(create(json!({"name": "x", "metric": "error_rate"}))),
            "threshold"
        );
        assert_eq!(
            field(create(
                json!({"name": "x", "metric": "error_rate", "threshold": 1.5})
            )),
            "threshold"
        );
        assert_eq!(
            field(create(
                json!({"name": "x", "metric": "srm", "threshold": 1})
            )),
            "threshold"
        );
        assert_eq!(
            field(create(
                json!({"name": "x", "metric": "webhook_disabled", "experiment": "e"})
            )),
            "experiment"
        );
        assert_eq!(
            field(create(
                json!({"name": "x", "metric": "ingest_rejections", "threshold": 0, "window_s": 301})
            )),
            "window_s"
        );
        assert!(create(json!({"name": "x", "metric": "srm", "experiment": "e"})).is_ok());
        assert_eq!(
            field(create(json!({"name": "x", "metric": "store_failed"}))),
            "metric"
        );
    }

    #[test]
    fn patches_are_validated_too() {
        let rule = create(json!({"name": "x", "metric": "error_rate", "threshold": 0.1})).unwrap();
        let patch = RulePatch {
            threshold: Some(-1.0),
            ..RulePatch::default()
        };
        assert!(rule.patched(patch, OffsetDateTime::UNIX_EPOCH).is_err());
        let patch = RulePatch {
            enabled: Some(false),
            ..RulePatch::default()
        };
        assert!(
            !rule
                .patched(patch, OffsetDateTime::UNIX_EPOCH)
                .unwrap()
                .enabled
        );
    }
}
