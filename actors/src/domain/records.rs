//! Records: what the store keeps, as distinct from what the API shows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::experiment::{legacy_mixing_variance, Plan};
use super::{
    Alert, AlertId, AlertMetric, AlertRule, AlertStatus, Allocation, BanditSpec, Bucketing,
    Correction, DeliveryAttempt, Derivation, DerivedSums, DomainEventKind, Event, EventType,
    Experiment, ExperimentAggregates, ExperimentKey, Guardrail, GuardrailStop, Layer,
    MeasureAggregates, Metric, MetricKey, ModelAggregates, ModelSpec, Phase, QuantileSketch,
    RuleId, Severity, Stamp, Status, UnitId, Variant, VariantAggregates, VariantKey, WebhookId,
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
    /// The widest coverage since it first started. Absent from records
    /// written before it was kept: read as 1.0, the widest possible, so
    /// units outside today's coverage are looked up.
    #[serde(default)]
    pub peak_coverage: Option<f64>,
    /// Hash salt; defaults to the key.
    pub salt: String,
    /// How units are hashed; abacus's own scheme in records from before
    /// the choice existed.
    #[serde(default)]
    pub bucketing: Bucketing,
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
    /// Records from before it could be set have 0.01; `null`: tuned to
    /// `plan`.
    #[serde(default = "legacy_mixing_variance")]
    pub mixing_variance: Option<f64>,
    /// What the team planned.
    #[serde(default)]
    pub plan: Option<Plan>,
    /// Correction across treatments × metrics; absent from records written
    /// before it existed (read as `None`, Holm per metric, as they were).
    #[serde(default)]
    pub correction: Option<Correction>,
    /// When the primary metric first became significant (corrected
    /// always-valid p-value below alpha); recorded once.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub significant_at: Option<OffsetDateTime>,
    /// When a sample-ratio mismatch was first detected; recorded once.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub srm_detected_at: Option<OffsetDateTime>,
    /// Metrics that must not get worse; see [`Guardrail`].
    #[serde(default)]
    pub guardrails: Vec<Guardrail>,
    /// A model experiment's settings; absent from other experiments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// The allocation history; absent from drafts and from experiments
    /// started before phases were recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
    /// `bandit`, or absent for fixed weights.
    #[serde(default, skip_serializing_if = "Allocation::is_fixed")]
    pub allocation: Allocation,
    /// A bandit's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
            peak_coverage: Some(e.peak_coverage),
            salt: e.salt.clone(),
            bucketing: e.bucketing,
            layer: e.layer.clone(),
            forced: e.forced.clone(),
            metrics: e.metrics.clone(),
            primary_metric: e.primary_metric.clone(),
            alpha: e.alpha,
            mixing_variance: e.mixing_variance,
            plan: e.plan,
            correction: e.correction,
            significant_at: e.significant_at,
            srm_detected_at: e.srm_detected_at,
            guardrails: e.guardrails.clone(),
            model: e.model.clone(),
            phases: e.phases.clone(),
            allocation: e.allocation,
            bandit: e.bandit,
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
            peak_coverage: r.peak_coverage.unwrap_or(1.0).max(r.coverage),
            salt: r.salt,
            bucketing: r.bucketing,
            layer: r.layer,
            phases: r.phases,
            forced: r.forced,
            metrics: r.metrics,
            primary_metric: r.primary_metric,
            alpha: r.alpha,
            mixing_variance: r.mixing_variance,
            plan: r.plan,
            correction: r.correction,
            significant_at: r.significant_at,
            srm_detected_at: r.srm_detected_at,
            guardrails: r.guardrails,
            model: r.model,
            allocation: r.allocation,
            bandit: r.bandit,
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

/// An alert as the `alerts` column family stores it; [`Alert`] is what
/// the API and the `alert.*` webhooks show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// `alert_` and a UUIDv7 (so ids sort by time).
    pub id: AlertId,
    /// The rule that raised it; `null` for a guardrail stop or a store
    /// failure, which abacus raises itself.
    pub rule_id: Option<RuleId>,
    /// The rule's name, or what happened.
    pub name: String,
    /// What was watched.
    pub metric: AlertMetric,
    /// How loud.
    pub severity: Severity,
    /// The experiment it concerns.
    pub experiment: Option<String>,
    /// The webhook subscription it concerns.
    pub subscription: Option<WebhookId>,
    /// Where it is in its life.
    pub status: AlertStatus,
    /// The figure when raised.
    pub value: Option<f64>,
    /// The rule's threshold.
    pub threshold: Option<f64>,
    /// One sentence for people.
    pub message: String,
    /// When it was raised.
    #[serde(with = "time::serde::rfc3339")]
    pub raised_at: OffsetDateTime,
    /// Who acknowledged it.
    pub acknowledged: Option<Stamp>,
    /// Who (or `abacus`, when the condition cleared) resolved it.
    pub resolved: Option<Stamp>,
}

impl From<&Alert> for AlertRecord {
    fn from(e: &Alert) -> Self {
        Self {
            id: e.id.clone(),
            rule_id: e.rule_id.clone(),
            name: e.name.clone(),
            metric: e.metric,
            severity: e.severity,
            experiment: e.experiment.clone(),
            subscription: e.subscription.clone(),
            status: e.status,
            value: e.value,
            threshold: e.threshold,
            message: e.message.clone(),
            raised_at: e.raised_at,
            acknowledged: e.acknowledged.clone(),
            resolved: e.resolved.clone(),
        }
    }
}

impl From<AlertRecord> for Alert {
    fn from(r: AlertRecord) -> Self {
        Self {
            id: r.id,
            rule_id: r.rule_id,
            name: r.name,
            metric: r.metric,
            severity: r.severity,
            experiment: r.experiment,
            subscription: r.subscription,
            status: r.status,
            value: r.value,
            threshold: r.threshold,
            message: r.message,
            raised_at: r.raised_at,
            acknowledged: r.acknowledged,
            resolved: r.resolved,
        }
    }
}

/// An alert rule as the `alert_rules` column family stores it;
/// [`AlertRule`] is what the API shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRuleRecord {
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
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<&AlertRule> for AlertRuleRecord {
    fn from(e: &AlertRule) -> Self {
        Self {
            id: e.id.clone(),
            name: e.name.clone(),
            metric: e.metric,
            threshold: e.threshold,
            window_s: e.window_s,
            experiment: e.experiment.clone(),
            severity: e.severity,
            enabled: e.enabled,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

impl From<AlertRuleRecord> for AlertRule {
    fn from(r: AlertRuleRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            metric: r.metric,
            threshold: r.threshold,
            window_s: r.window_s,
            experiment: r.experiment,
            severity: r.severity,
            enabled: r.enabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A delivery attempt as the `webhook_attempts` column family stores it;
/// [`DeliveryAttempt`] is what the deliveries list shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttemptRecord {
    /// The message's `webhook-id`.
    pub message_id: String,
    /// Its event type.
    #[serde(rename = "type")]
    pub kind: DomainEventKind,
    /// 1 for the first try.
    pub attempt: u32,
    /// When it was sent.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The HTTP status, if one came back.
    pub status_code: Option<u16>,
    /// Time to the response (or the failure), in ms.
    pub latency_ms: f64,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// `delivered`, `retrying`, `failed` (retries exhausted) or `disabled`.
    pub outcome: String,
}

impl From<&DeliveryAttempt> for DeliveryAttemptRecord {
    fn from(e: &DeliveryAttempt) -> Self {
        Self {
            message_id: e.message_id.clone(),
            kind: e.kind,
            attempt: e.attempt,
            at: e.at,
            status_code: e.status_code,
            latency_ms: e.latency_ms,
            error: e.error.clone(),
            outcome: e.outcome.clone(),
        }
    }
}

impl From<DeliveryAttemptRecord> for DeliveryAttempt {
    fn from(r: DeliveryAttemptRecord) -> Self {
        Self {
            message_id: r.message_id,
            kind: r.kind,
            attempt: r.attempt,
            at: r.at,
            status_code: r.status_code,
            latency_ms: r.latency_ms,
            error: r.error,
            outcome: r.outcome,
        }
    }
}

/// An event as layout 1 of the `events` column family stored it (JSON),
/// written borrowed from the [`Event`]; read back as an [`EventRecord`].
/// The store now writes the binary encoding (`storage::event_codec`) and
/// still reads these, so only tests write them.
#[cfg(test)]
#[derive(Serialize)]
pub struct EventRecordRef<'a> {
    seq: u64,
    event_id: &'a super::EventId,
    #[serde(rename = "type")]
    kind: &'a EventType,
    unit_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    experiment: Option<&'a ExperimentKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a VariantKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    timestamp_ms: i64,
    received_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<&'a super::Properties>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    assignment_mismatch: bool,
}

#[cfg(test)]
impl<'a> From<&'a Event> for EventRecordRef<'a> {
    fn from(e: &'a Event) -> Self {
        Self {
            seq: e.seq,
            event_id: &e.event_id,
            kind: &e.kind,
            unit_id: &e.unit_id,
            experiment: e.experiment.as_ref(),
            variant: e.variant.as_ref(),
            value: e.value,
            timestamp_ms: e.timestamp_ms,
            received_ms: e.received_ms,
            session_id: e.session_id.as_deref(),
            properties: e.properties.as_ref(),
            assignment_mismatch: e.assignment_mismatch,
        }
    }
}

/// A stored event as layout 1 wrote it (JSON), read back.
#[derive(Deserialize)]
pub struct EventRecord {
    seq: u64,
    event_id: Box<str>,
    #[serde(rename = "type")]
    kind: EventType,
    unit_id: Box<str>,
    #[serde(default)]
    experiment: Option<ExperimentKey>,
    #[serde(default)]
    variant: Option<VariantKey>,
    #[serde(default)]
    value: Option<f64>,
    timestamp_ms: i64,
    received_ms: i64,
    #[serde(default)]
    session_id: Option<Box<str>>,
    #[serde(default)]
    properties: Option<Box<RawValue>>,
    #[serde(default)]
    assignment_mismatch: bool,
}

impl TryFrom<EventRecord> for Event {
    type Error = String;
    fn try_from(r: EventRecord) -> Result<Self, String> {
        Ok(Self {
            seq: r.seq,
            event_id: super::EventId::Text(r.event_id),
            kind: r.kind,
            unit_id: r.unit_id,
            experiment: r.experiment,
            variant: r.variant,
            value: r.value,
            timestamp_ms: r.timestamp_ms,
            received_ms: r.received_ms,
            session_id: r.session_id,
            properties: r.properties.map(super::Properties::stored).transpose()?,
            assignment_mismatch: r.assignment_mismatch,
            // Whether the id came from the client matters only until the
            // event is committed.
            client_id: false,
        })
    }
}

/// An experiment's aggregates as the `aggregates` column family stores
/// them, written from the live [`ExperimentAggregates`] without copying
/// (once per changed experiment per committed batch) and read back as an
/// [`AggregatesRecord`]. [`ExperimentAggregates`] is what the API shows.
pub struct AggregatesRecordRef<'a>(pub &'a ExperimentAggregates);

impl Serialize for AggregatesRecordRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Measure<'a>(&'a MeasureAggregates);
        impl Serialize for Measure<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let m = self.0;
                let mut out = s.serialize_struct("MeasureRecord", 4)?;
                out.serialize_field("units", &m.units)?;
                out.serialize_field("events", &m.events)?;
                out.serialize_field("sum", &m.sum)?;
                out.serialize_field("sum_squares", &m.sum_squares)?;
                out.end()
            }
        }
        struct Variant<'a>(&'a VariantAggregates);
        impl Serialize for Variant<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let v = self.0;
                let mut out = s.serialize_struct("VariantRecord", 6)?;
                out.serialize_field("units", &v.units)?;
                out.serialize_field("exposures", &v.exposures)?;
                out.serialize_field("assignment_mismatches", &v.assignment_mismatches)?;
                let measures = v.measures.iter().map(|(k, m)| (k, Measure(m)));
                out.serialize_field("measures", &Collect::new(measures))?;
                if !v.derived.is_empty() {
                    out.serialize_field("derived", &v.derived)?;
                }
                if !v.sketches.is_empty() {
                    out.serialize_field("sketches", &v.sketches)?;
                }
                if let Some(model) = &v.model {
                    out.serialize_field("model", model)?;
                }
                out.end()
            }
        }
        let variants = self.0.variants.iter().map(|(k, v)| (k, Variant(v)));
        let mut out = s.serialize_struct("AggregatesRecord", 2)?;
        out.serialize_field("variants", &Collect::new(variants))?;
        if !self.0.derived.is_empty() {
            out.serialize_field("derived", &self.0.derived)?;
        }
        out.end()
    }
}

/// A map serialised straight from an iterator, without collecting it.
struct Collect<I>(std::cell::Cell<Option<I>>);

impl<I> Collect<I> {
    fn new(items: I) -> Self {
        Self(std::cell::Cell::new(Some(items)))
    }
}

impl<K: Serialize, V: Serialize, I: Iterator<Item = (K, V)>> Serialize for Collect<I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let items = self
            .0
            .take()
            .ok_or_else(|| serde::ser::Error::custom("a record map is serialised once"))?;
        s.collect_map(items)
    }
}

/// Stored aggregates as read back (see [`AggregatesRecordRef`]).
#[derive(Deserialize)]
pub struct AggregatesRecord {
    variants: BTreeMap<String, VariantRecord>,
    /// Absent before derived metrics existed.
    #[serde(default)]
    derived: BTreeMap<String, Derivation>,
}

#[derive(Deserialize)]
struct VariantRecord {
    units: u64,
    exposures: u64,
    assignment_mismatches: u64,
    measures: BTreeMap<String, MeasureRecord>,
    #[serde(default)]
    derived: BTreeMap<String, DerivedSums>,
    #[serde(default)]
    sketches: BTreeMap<String, QuantileSketch>,
    #[serde(default)]
    model: Option<ModelAggregates>,
}

#[derive(Deserialize)]
struct MeasureRecord {
    units: u64,
    events: u64,
    sum: f64,
    sum_squares: f64,
}

impl From<AggregatesRecord> for ExperimentAggregates {
    fn from(r: AggregatesRecord) -> Self {
        let variants = r
            .variants
            .into_iter()
            .map(|(key, v)| {
                let measures = v
                    .measures
                    .into_iter()
                    .map(|(key, m)| {
                        let m = MeasureAggregates {
                            units: m.units,
                            events: m.events,
                            sum: m.sum,
                            sum_squares: m.sum_squares,
                        };
                        (key, m)
                    })
                    .collect();
                let v = VariantAggregates {
                    units: v.units,
                    exposures: v.exposures,
                    assignment_mismatches: v.assignment_mismatches,
                    measures,
                    derived: v.derived,
                    sketches: v.sketches,
                    model: v.model,
                };
                (key, v)
            })
            .collect();
        Self {
            variants,
            derived: r.derived,
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
            "correction": "bh",
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
        assert_eq!(experiment.correction, None, "Holm per metric, as before");
        assert_eq!(
            experiment.mixing_variance,
            Some(0.01),
            "it keeps the old default"
        );
    }

    #[test]
    fn aggregates_are_stored_in_the_shape_they_are_shown_and_read_back() {
        let mut a = ExperimentAggregates::default();
        let mut v = VariantAggregates {
            units: 3,
            exposures: 4,
            assignment_mismatches: 1,
            ..VariantAggregates::default()
        };
        v.measures.insert(
            "buy".into(),
            MeasureAggregates {
                units: 2,
                events: 5,
                sum: 7.5,
                sum_squares: 30.25,
            },
        );
        a.variants.insert("control".into(), v);
        let stored = serde_json::to_vec(&AggregatesRecordRef(&a)).expect("encode");
        assert_eq!(stored, serde_json::to_vec(&a).expect("shown"), "same JSON");
        let back: AggregatesRecord = serde_json::from_slice(&stored).expect("decode");
        assert_eq!(ExperimentAggregates::from(back), a);
    }
}
