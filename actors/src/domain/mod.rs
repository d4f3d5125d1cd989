//! The domain: identifiers, experiments, their lifecycle and validation,
//! events and their aggregates, and every record the store keeps (alerts
//! and their rules, webhook subscriptions and deliveries, analytics
//! buckets, timeline snapshots).
//! Plain data and pure functions, tested without actors or storage; the
//! store depends on this module and on nothing above it.

mod aggregate;
mod alert;
mod alert_rule;
mod alias;
mod audit;
mod bandit;
mod bucket;
mod credential;
mod domain_event;
mod event;
mod experiment;
mod holdout;
mod ids;
mod lifecycle;
mod model;
mod objects;
mod phase;
mod project;
mod properties;
mod quantile;
mod quota;
mod records;
mod sticky;
mod timeline;
mod webhook;

pub use aggregate::{
    finite, sketch_key, sketch_of, AggregateChanges, Covariate, Derivation, Derivations,
    DerivedSums, ExperimentAggregates, Exposure, MeasureAggregates, PredictionChange, UnitChange,
    UnitMeasure, VariantAggregates,
};
pub use alert::{Alert, AlertStatus, Firing, Stamp, StampIn, SYSTEM};
pub use alert_rule::{AlertMetric, AlertRule, RuleIn, RulePatch, Severity, MAX_WINDOW_S};
pub use alias::{merge as merge_linked, Alias, MovedExposure, Taken, Transfer};
pub use audit::{AuditEntry, AuditFilter, ResourceKind};
pub use bandit::{Allocation, BanditSpec, Reallocation};
pub use bucket::{Bucket, Sketch, SKETCH_RELATIVE_ERROR};
pub use credential::{
    ApiKey, KeyIn, KeyIssued, KeyOut, Need, Previous, Principal, Role, RotateIn, DEFAULT_PROJECT,
    MAX_ROTATION_GRACE_S,
};
pub use domain_event::{DomainEvent, DomainEventKind};
pub use event::{json_len, unix_ms, Event, EventIn, EventLimits, EventType};
pub use experiment::{
    Bucketing, Correction, Cuped, Experiment, ExperimentIn, ExperimentPatch, Guardrail,
    GuardrailStop, Layer, Metric, MetricKind, Variant, MAX_FORCED, MAX_PHASES, MAX_VARIANTS,
};
pub use holdout::{Holdout, HoldoutIn, EXPOSED, HELD_OUT};
pub use ids::{
    uuid_v7, AlertId, AuditId, EventId, ExperimentKey, KeyId, MetricKey, ProjectKey, RuleId,
    UnitId, VariantKey, WebhookId,
};
pub use lifecycle::{Action, Status};
pub use model::{
    measures, psi, CalibrationBin, DriftSpec, DriftWindow, ModelAggregates, ModelSpec, ModelTask,
    ModelTracking, Quality, Scored, CALIBRATION_BINS, MIN_DRIFT_COUNT, MODEL_DERIVATION,
};
pub use phase::{
    contiguous, moved, phase_at, position, relayout, split_stratum, stratum, within, Phase,
    PhaseView, Segment, Span, PHASES_DERIVATION,
};
pub use project::{Project, ProjectIn, ProjectPatch, MAX_PROJECT_NAME_CHARS};
pub use properties::{ModelFields, Properties};
pub use quantile::{
    group_of, QuantileEstimate, QuantileOf, QuantileSketch, QuantileSpec, DEFAULT_QUANTILE_BINS,
    GROUPS,
};
pub use quota::{QuotaLimits, QuotaOverrides, QuotaPatch, MAX_QUOTA_COUNT, MAX_QUOTA_RATE};
#[cfg(test)]
pub use records::EventRecordRef;
pub use records::{
    AggregatesRecord, AggregatesRecordRef, AlertRecord, AlertRuleRecord, DeliveryAttemptRecord,
    EventRecord, ExperimentRecord,
};
pub use sticky::StickyAssignment;
pub use timeline::{TimelineSnapshot, VariantFigures, VariantPoint};
pub use webhook::{
    DeliveryAttempt, DeliveryStats, Disabled, Webhook, WebhookIn, WebhookMessage, WebhookOut,
};

/// Strategies for property tests of the decoders: arbitrary JSON, with
/// the numbers and strings that break naive code weighted in.
#[cfg(test)]
pub(crate) mod arbitrary {
    use proptest::prelude::*;
    use serde_json::{Number, Value};

    /// A number: ordinary, huge, tiny, negative zero, integer edges.
    pub fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<f64>().prop_filter_map("JSON numbers are finite", |f| {
                Number::from_f64(f).map(Value::Number)
            }),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            prop::sample::select(vec![
                1e308,
                -1e308,
                1.7976931348623157e308,
                1e-320,
                -0.0,
                0.0,
                1e15,
                1e16,
                1e200,
                -1.0,
                0.5,
                1e9,
                4294967296.0,
            ])
            .prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ]
    }

    /// A string: names that look valid, empty, long, control characters.
    pub fn string() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[a-z0-9_-]{1,70}",
            "\\PC{0,40}",
            Just(String::new()),
            Just("x".repeat(300)),
            Just("\u{0}\n\t".to_owned()),
            Just("2024-01-01T00:00:00Z".to_owned()),
            Just("0001-01-01T00:00:00Z".to_owned()),
        ]
        .prop_map(Value::from)
    }

    /// Any JSON value up to a few levels deep.
    pub fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            number(),
            string(),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// An object with some of `fields` (each an arbitrary value, often of a
    /// plausible kind) and perhaps a stray one.
    pub fn object_with(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
        let value = prop_oneof![3 => number(), 3 => string(), 2 => json()];
        prop::collection::btree_map(prop::sample::select(fields), value, 0..=fields.len())
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    }
}
