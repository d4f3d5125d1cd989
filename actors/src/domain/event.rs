//! Events: what units did. [`EventIn`] is one event as a client sends it;
//! [`EventIn::check`] applies the rules of its type, and [`Event`] is the
//! stamped record the sinks store.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::ids::check_printable;
use super::properties::{Counted, Fields, ModelFields, Slot};
use super::{EventId, ExperimentKey, MetricKey, Properties, UnitId, VariantKey};
use crate::{Error, Result};

// Bodies are read from JSON objects only, never from arrays of their
// fields (domain/objects.rs).
crate::objects_only!(EventIn);

/// Longest `event_id` and `session_id`, in characters (as JSON Schema's
/// `maxLength` counts them).
const MAX_ID_CHARS: usize = 128;
/// Largest `results_count` of an impression: far more than any result list.
const MAX_RESULTS_COUNT: u64 = 1_000_000_000;

/// The bounds every event is checked against (`[limits]` and the time
/// window in `[ingest]`). They exist so that no accepted event can make a
/// stored figure non-finite (sums of values stay below 1e15 x 2^64, their
/// squares below 1e69) and no client can grow what abacus keeps per event.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    /// Largest `|value|` (and metric/conversion `properties.value`).
    pub max_abs_value: f64,
    /// Largest `response_time_ms` / `dwell_time_ms`.
    pub max_duration_ms: f64,
    /// Largest clicked `rank`.
    pub max_rank: u64,
    /// Largest serialised `properties` object, in bytes.
    pub max_property_bytes: usize,
    /// Oldest accepted timestamp, in ms before the time of receipt.
    pub max_age_ms: i64,
    /// Newest accepted timestamp, in ms after the time of receipt.
    pub max_skew_ms: i64,
}

impl Default for EventLimits {
    /// The defaults of `config/default.toml`.
    fn default() -> Self {
        Self {
            max_abs_value: 1e15,
            max_duration_ms: 86_400_000.0,
            max_rank: 1000,
            max_property_bytes: 16 * 1024,
            max_age_ms: 7 * 24 * 3600 * 1000,
            max_skew_ms: 24 * 3600 * 1000,
        }
    }
}

/// What kind of thing happened. Typed events have required properties;
/// any other name is a custom event with free properties.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The unit saw its variant.
    Exposure,
    /// A result list was shown: `{query?, results_count?, response_time_ms?}`.
    Impression,
    /// An item was clicked: `{item_id, rank?, query?, response_time_ms?, source?}`.
    Click,
    /// The unit converted: `{value?}`.
    Conversion,
    /// Time spent on an item: `{item_id, dwell_time_ms, action?}`.
    Engagement,
    /// A named measurement: `{name, value}`.
    Metric,
    /// A model's prediction: `{prediction_id, model?, score | value,
    /// label?, confidence?, latency_ms?}`; names its experiment.
    Prediction,
    /// What really happened to a prediction: `{prediction_id, label |
    /// value}`.
    Outcome,
    /// Anything else, named `[a-z0-9_-]{1,64}`.
    Custom(MetricKey),
}

impl EventType {
    /// The type's name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            EventType::Exposure => "exposure",
            EventType::Impression => "impression",
            EventType::Click => "click",
            EventType::Conversion => "conversion",
            EventType::Engagement => "engagement",
            EventType::Metric => "metric",
            EventType::Prediction => "prediction",
            EventType::Outcome => "outcome",
            EventType::Custom(name) => name.as_str(),
        }
    }
}

impl TryFrom<&str> for EventType {
    type Error = String;
    fn try_from(s: &str) -> Result<Self, String> {
        Ok(match s {
            "exposure" => EventType::Exposure,
            "impression" => EventType::Impression,
            "click" => EventType::Click,
            "conversion" => EventType::Conversion,
            "engagement" => EventType::Engagement,
            "metric" => EventType::Metric,
            "prediction" => EventType::Prediction,
            "outcome" => EventType::Outcome,
            _ => EventType::Custom(
                MetricKey::try_from(s)
                    .map_err(|_| "event type must be 1-64 characters of a-z, 0-9, _ or -")?,
            ),
        })
    }
}

impl From<EventType> for String {
    fn from(t: EventType) -> String {
        t.as_str().to_owned()
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Read from borrowed text: a built-in type allocates nothing.
impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::ids::deserialize_text(d, "an event type")
    }
}

/// One event as sent by a client.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(remote = "Self")]
pub struct EventIn {
    /// Client id for de-duplication (1-128 characters without control
    /// characters); the server makes one otherwise.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub event_id: Option<String>,
    /// `exposure`, `impression`, `click`, `conversion`, `engagement`,
    /// `metric`, `prediction`, `outcome`, or a custom name of the same shape as a key.
    #[serde(rename = "type")]
    #[schema(value_type = String, pattern = "^[a-z0-9_-]{1,64}$")]
    pub kind: EventType,
    /// The unit that did it.
    pub unit_id: UnitId,
    /// The experiment it belongs to, if any.
    #[serde(default)]
    pub experiment: Option<ExperimentKey>,
    /// The variant the unit saw; derived from its assignment when omitted.
    #[serde(default)]
    pub variant: Option<VariantKey>,
    /// A number: revenue, a metric value, ...
    #[serde(default)]
    pub value: Option<f64>,
    /// When it happened (RFC 3339); default now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub timestamp: Option<OffsetDateTime>,
    /// Session id, up to 128 characters.
    #[serde(default)]
    #[schema(max_length = 128)]
    pub session_id: Option<String>,
    /// Type-specific and free properties: an object, kept as sent, of at
    /// most `limits.max_property_bytes` bytes of JSON.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub properties: Option<Box<RawValue>>,
}

/// A stamped event, as exported, sent to sinks and shown by the API. The
/// store keeps an [`EventRecord`](super::EventRecord).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Position in the store's commit order; assigned by the sink.
    pub seq: u64,
    /// De-duplication id.
    pub event_id: EventId,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The unit.
    pub unit_id: Box<str>,
    /// The experiment, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub experiment: Option<ExperimentKey>,
    /// The variant the unit saw, if known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub variant: Option<VariantKey>,
    /// The event's number: `value`, or for metrics and conversions
    /// `properties.value` when `value` is absent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<f64>,
    /// When it happened, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// When the server accepted it.
    pub received_ms: i64,
    /// Session id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub session_id: Option<Box<str>>,
    /// Properties as sent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub properties: Option<Properties>,
    /// The explicit variant differs from abacus's own assignment.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub assignment_mismatch: bool,
    /// The id came from the client, so the sink checks it for duplicates
    /// (server-made ids are UUIDv7 and cannot collide).
    #[serde(skip)]
    pub client_id: bool,
}

impl Event {
    /// The metric key this event counts towards: its type, or a metric
    /// event's `name`.
    pub fn metric_name(&self) -> &str {
        match (&self.kind, &self.properties) {
            (EventType::Metric, Some(p)) => p.name().unwrap_or(""),
            (kind, _) => kind.as_str(),
        }
    }
}

#[cfg(test)]
impl Event {
    /// A stored event of `kind` by `unit` at time 0, everything else empty:
    /// tests set what they care about with struct-update syntax.
    pub(crate) fn sample(kind: &str, unit: &str) -> Self {
        Self {
            seq: 0,
            event_id: "e".into(),
            kind: EventType::try_from(kind).expect("a valid event type"),
            unit_id: unit.into(),
            experiment: None,
            variant: None,
            value: None,
            timestamp_ms: 0,
            received_ms: 0,
            session_id: None,
            properties: None,
            assignment_mismatch: false,
            client_id: false,
        }
    }
}

impl EventIn {
    /// Applies the rules of the event's type and stamps it. Field names in
    /// errors are relative to the event (`properties.item_id`).
    pub fn check(
        self,
        now: OffsetDateTime,
        limits: &EventLimits,
        make_id: impl FnOnce() -> EventId,
    ) -> Result<Event> {
        let fields = match &self.properties {
            Some(json) if json.get().len() > limits.max_property_bytes => {
                return Err(Error::invalid(
                    "properties",
                    format!(
                        "properties must be at most {} bytes",
                        limits.max_property_bytes
                    ),
                ));
            }
            Some(json) => Fields::of(json).map_err(|m| Error::invalid("properties", m))?,
            None => Fields::default(),
        };
        let value_bound = Bound::Magnitude(limits.max_abs_value);
        let duration = Bound::Range(0.0, limits.max_duration_ms);
        let value = match (&self.kind, self.value) {
            (
                EventType::Metric
                | EventType::Conversion
                | EventType::Prediction
                | EventType::Outcome,
                None,
            ) => optional_number(fields.value, "value", value_bound)?,
            (_, value) => value,
        };
        if let Some(v) = value {
            if !(v.is_finite() && v.abs() <= limits.max_abs_value) {
                return Err(Error::invalid(
                    "value",
                    format!(
                        "value must be a finite number of magnitude at most {:e}",
                        limits.max_abs_value
                    ),
                ));
            }
        }
        let mut counted = Counted::default();
        match self.kind {
            EventType::Exposure => {
                if self.experiment.is_none() {
                    return Err(Error::invalid(
                        "experiment",
                        "an exposure names its experiment",
                    ));
                }
            }
            EventType::Impression => {
                optional_string(fields.query, "query")?;
                optional_number(
                    fields.results_count,
                    "results_count",
                    Bound::Count(MAX_RESULTS_COUNT),
                )?;
                counted.response_time_ms =
                    optional_number(fields.response_time_ms, "response_time_ms", duration)?;
            }
            EventType::Click => {
                required_string(fields.item_id, "item_id")?;
                // Checked to be an integer in 0..=max_rank.
                counted.rank = optional_number(fields.rank, "rank", Bound::Count(limits.max_rank))?
                    .map(|r| r as u64);
                optional_string(fields.query, "query")?;
                counted.response_time_ms =
                    optional_number(fields.response_time_ms, "response_time_ms", duration)?;
                optional_string(fields.source, "source")?;
            }
            EventType::Conversion | EventType::Custom(_) => {}
            EventType::Engagement => {
                required_string(fields.item_id, "item_id")?;
                counted.dwell_time_ms =
                    optional_number(fields.dwell_time_ms, "dwell_time_ms", duration)?;
                if counted.dwell_time_ms.is_none() {
                    return Err(Error::invalid(
                        "properties.dwell_time_ms",
                        "an engagement needs dwell_time_ms",
                    ));
                }
                counted.action = optional_string(fields.action, "action")?.map(Into::into);
            }
            EventType::Metric => {
                let name = required_string(fields.name, "name")?;
                counted.name = Some(
                    MetricKey::try_from(&*name)
                        .map_err(|m| Error::invalid("properties.name", m))?,
                );
                if value.is_none() {
                    return Err(Error::invalid("value", "a metric event needs a value"));
                }
            }
            EventType::Prediction => {
                if self.experiment.is_none() {
                    return Err(Error::invalid(
                        "experiment",
                        "a prediction names its experiment",
                    ));
                }
                let model = optional_id(fields.model, "model")?;
                let unit = Bound::Range(0.0, 1.0);
                let score = optional_number(fields.score, "score", unit)?;
                match (score, value) {
                    (None, None) => {
                        return Err(Error::invalid(
                            "properties.score",
                            "a prediction needs a score (a classifier) or a value (a regressor)",
                        ))
                    }
                    (Some(_), Some(_)) => {
                        return Err(Error::invalid(
                            "value",
                            "a prediction has a score or a value, not both",
                        ))
                    }
                    _ => {}
                }
                counted.model = Some(Box::new(ModelFields {
                    prediction_id: required_id(fields.prediction_id, "prediction_id")?,
                    model,
                    score,
                    label: optional_label(fields.label)?,
                    confidence: optional_number(fields.confidence, "confidence", unit)?,
                    latency_ms: optional_number(fields.latency_ms, "latency_ms", duration)?,
                }));
            }
            EventType::Outcome => {
                let prediction_id = required_id(fields.prediction_id, "prediction_id")?;
                let label = optional_label(fields.label)?;
                match (&label, value) {
                    (None, None) => {
                        return Err(Error::invalid(
                            "properties.label",
                            "an outcome needs the true label (a classifier) or value (a regressor)",
                        ))
                    }
                    (Some(_), Some(_)) => {
                        return Err(Error::invalid(
                            "value",
                            "an outcome has a label or a value, not both",
                        ))
                    }
                    _ => {}
                }
                counted.model = Some(Box::new(ModelFields {
                    prediction_id,
                    label,
                    ..ModelFields::default()
                }));
            }
        }
        let client_id = self.event_id.is_some();
        let event_id = match self.event_id {
            Some(id) => {
                if check_printable(&id, MAX_ID_CHARS).is_err() {
                    return Err(Error::invalid(
                        "event_id",
                        format!("event_id must be 1-{MAX_ID_CHARS} characters without control characters"),
                    ));
                }
                EventId::from(id)
            }
            None => make_id(),
        };
        if let Some(s) = &self.session_id {
            if s.chars().count() > MAX_ID_CHARS {
                return Err(Error::invalid(
                    "session_id",
                    format!("session_id must be at most {MAX_ID_CHARS} characters"),
                ));
            }
        }
        let received_ms = unix_ms(now);
        let timestamp_ms = self.timestamp.map_or(received_ms, unix_ms);
        if timestamp_ms > received_ms.saturating_add(limits.max_skew_ms) {
            return Err(Error::invalid(
                "timestamp",
                format!(
                    "timestamp is more than {} s in the future",
                    limits.max_skew_ms / 1000
                ),
            ));
        }
        if timestamp_ms < received_ms.saturating_sub(limits.max_age_ms) {
            return Err(Error::invalid(
                "timestamp",
                format!(
                    "timestamp is more than {} s in the past",
                    limits.max_age_ms / 1000
                ),
            ));
        }
        Ok(Event {
            seq: 0,
            event_id,
            kind: self.kind,
            unit_id: String::from(self.unit_id).into(),
            experiment: self.experiment,
            variant: self.variant,
            value,
            timestamp_ms,
            received_ms,
            session_id: self.session_id.map(Into::into),
            properties: self
                .properties
                .map(|json| Properties::checked(json, counted)),
            assignment_mismatch: false,
            client_id,
        })
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The serialised size of a JSON value, counted without building it.
pub fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing JSON to a sink that never fails fails only for a value that
    // is not JSON (a map with non-string keys); that counts what it wrote.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[derive(Clone, Copy)]
enum Bound {
    /// `|n| <= bound`.
    Magnitude(f64),
    /// `low <= n <= high`.
    Range(f64, f64),
    /// An integer in `0..=max`.
    Count(u64),
}

fn optional_number(slot: Slot<'_>, key: &str, bound: Bound) -> Result<Option<f64>> {
    let Some(n) = slot.number() else {
        return Ok(None);
    };
    let field = || format!("properties.{key}");
    let n = n.map_err(|()| Error::invalid(field(), format!("{key} must be a number")))?;
    let within = match bound {
        Bound::Magnitude(max) => n.abs() <= max,
        Bound::Range(low, high) => (low..=high).contains(&n),
        Bound::Count(max) => slot.count().and_then(Result::ok).is_some_and(|c| c <= max),
    };
    if within {
        return Ok(Some(n));
    }
    let rule = match bound {
        Bound::Magnitude(max) => format!("{key} must be a number of magnitude at most {max:e}"),
        Bound::Range(low, high) => format!("{key} must be between {low} and {high}"),
        Bound::Count(max) => format!("{key} must be an integer between 0 and {max}"),
    };
    Err(Error::invalid(field(), rule))
}

fn optional_string<'a>(slot: Slot<'a>, key: &str) -> Result<Option<Cow<'a, str>>> {
    slot.text().transpose().map_err(|()| {
        Error::invalid(
            format!("properties.{key}"),
            format!("{key} must be a string"),
        )
    })
}

/// An id or name of at most [`MAX_ID_CHARS`] printable characters.
fn optional_id(slot: Slot<'_>, key: &str) -> Result<Option<Box<str>>> {
    let Some(text) = optional_string(slot, key)? else {
        return Ok(None);
    };
    check_printable(&text, MAX_ID_CHARS).map_err(|_| {
        Error::invalid(
            format!("properties.{key}"),
            format!("{key} must be 1-{MAX_ID_CHARS} characters without control characters"),
        )
    })?;
    Ok(Some(text.into()))
}

fn required_id(slot: Slot<'_>, key: &str) -> Result<Box<str>> {
    optional_id(slot, key)?
        .ok_or_else(|| Error::invalid(format!("properties.{key}"), format!("{key} is required")))
}

fn optional_label(slot: Slot<'_>) -> Result<Option<Box<str>>> {
    let label = slot.label().transpose().map_err(|()| {
        Error::invalid(
            "properties.label",
            "label must be a non-empty string, an integer or a boolean",
        )
    })?;
    if label
        .as_deref()
        .is_some_and(|l| l.chars().count() > MAX_ID_CHARS)
    {
        return Err(Error::invalid(
            "properties.label",
            format!("label must be at most {MAX_ID_CHARS} characters"),
        ));
    }
    Ok(label)
}

fn required_string<'a>(slot: Slot<'a>, key: &str) -> Result<Cow<'a, str>> {
    match optional_string(slot, key)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Error::invalid(
            format!("properties.{key}"),
            format!("{key} is required"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn check(body: Value) -> Result<Event> {
        let input: EventIn =
            serde_json::from_value(body).map_err(|e| Error::invalid("body", e.to_string()))?;
        input.check(now(), &EventLimits::default(), || "generated".into())
    }

    /// 2024-10-04, a few months after the sample timestamps below.
    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)
    }

    fn field_of(r: Result<Event>) -> String {
        match r {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn typed_events_need_their_properties() {
        let cases = [
            (
                json!({"type": "click", "unit_id": "u"}),
                "properties.item_id",
            ),
            (
                json!({"type": "click", "unit_id": "u", "properties": {"item_id": 5}}),
                "properties.item_id",
            ),
            (
                json!({"type": "click", "unit_id": "u", "properties": {"item_id": "a", "rank": -1}}),
                "properties.rank",
            ),
            (
                json!({"type": "click", "unit_id": "u", "properties": {"item_id": "a", "rank": 1.5}}),
                "properties.rank",
            ),
            (
                json!({"type": "engagement", "unit_id": "u", "properties": {"item_id": "a"}}),
                "properties.dwell_time_ms",
            ),
            (
                json!({"type": "engagement", "unit_id": "u", "properties": {"item_id": "a", "dwell_time_ms": -5}}),
                "properties.dwell_time_ms",
            ),
            (
                json!({"type": "impression", "unit_id": "u", "properties": {"response_time_ms": "fast"}}),
                "properties.response_time_ms",
            ),
            (
                json!({"type": "metric", "unit_id": "u", "properties": {"name": "revenue"}}),
                "value",
            ),
            (
                json!({"type": "metric", "unit_id": "u", "value": 1}),
                "properties.name",
            ),
            (json!({"type": "exposure", "unit_id": "u"}), "experiment"),
            (
                json!({"type": "prediction", "unit_id": "u", "properties": {"prediction_id": "p", "score": 0.5}}),
                "experiment",
            ),
            (
                json!({"type": "prediction", "unit_id": "u", "experiment": "e", "properties": {"score": 0.5}}),
                "properties.prediction_id",
            ),
            (
                json!({"type": "prediction", "unit_id": "u", "experiment": "e", "properties": {"prediction_id": "p"}}),
                "properties.score",
            ),
            (
                json!({"type": "prediction", "unit_id": "u", "experiment": "e", "value": 2, "properties": {"prediction_id": "p", "score": 0.5}}),
                "value",
            ),
            (
                json!({"type": "prediction", "unit_id": "u", "experiment": "e", "properties": {"prediction_id": "p", "score": 1.5}}),
                "properties.score",
            ),
            (
                json!({"type": "prediction", "unit_id": "u", "experiment": "e", "properties": {"prediction_id": "p", "score": 0.5, "label": 0.5}}),
                "properties.label",
            ),
            (
                json!({"type": "prediction", "unit_id": "u", "experiment": "e", "properties": {"prediction_id": "p", "value": 3, "latency_ms": -1}}),
                "properties.latency_ms",
            ),
            (
                json!({"type": "outcome", "unit_id": "u", "properties": {"prediction_id": "p"}}),
                "properties.label",
            ),
            (
                json!({"type": "outcome", "unit_id": "u", "value": 1, "properties": {"prediction_id": "p", "label": "a"}}),
                "value",
            ),
            (
                json!({"type": "outcome", "unit_id": "u", "properties": {"prediction_id": "", "label": "a"}}),
                "properties.prediction_id",
            ),
            (
                json!({"type": "custom", "unit_id": "u", "event_id": ""}),
                "event_id",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(field_of(check(body.clone())), field, "{body}");
        }
    }

    #[test]
    fn valid_events_are_stamped() {
        let e = check(json!({
            "type": "metric", "unit_id": "u", "properties": {"name": "revenue", "value": 9.5}
        }))
        .unwrap();
        assert_eq!((e.value, e.metric_name()), (Some(9.5), "revenue"));
        assert_eq!(e.event_id.text(), "generated");
        assert_eq!(e.timestamp_ms, e.received_ms);

        let click = check(json!({
            "type": "click", "unit_id": "u", "event_id": "c-1",
            "timestamp": "2024-10-01T10:00:00Z",
            "properties": {"item_id": "sku-1", "rank": 3, "response_time_ms": 12.5}
        }))
        .unwrap();
        assert_eq!(click.event_id.text(), "c-1");
        assert_eq!(click.timestamp_ms, 1_727_776_800_000);
        assert_eq!(
            click.properties.as_ref().and_then(Properties::rank),
            Some(3)
        );
        assert_eq!(click.metric_name(), "click");
    }

    #[test]
    fn predictions_and_outcomes_keep_what_the_join_reads() {
        let p = check(json!({
            "type": "prediction", "unit_id": "u", "experiment": "e",
            "properties": {"prediction_id": "p-1", "model": "v2", "score": 0.25,
                           "label": true, "confidence": 0.9, "latency_ms": 12}
        }))
        .unwrap();
        let m = p.properties.as_ref().and_then(Properties::model).unwrap();
        assert_eq!(
            (
                &*m.prediction_id,
                m.model.as_deref(),
                m.score,
                m.label.as_deref()
            ),
            ("p-1", Some("v2"), Some(0.25), Some("1"))
        );
        assert_eq!(
            (m.confidence, m.latency_ms, m.guess()),
            (Some(0.9), Some(12.0), Some(("1", 0.9)))
        );
        // A regressor's value may sit in the properties, like a metric's.
        let r = check(json!({
            "type": "prediction", "unit_id": "u", "experiment": "e",
            "properties": {"prediction_id": "p-2", "value": 41.5}
        }))
        .unwrap();
        assert_eq!(r.value, Some(41.5));
        let o = check(json!({
            "type": "outcome", "unit_id": "u", "properties": {"prediction_id": "p-1", "label": 1}
        }))
        .unwrap();
        let stored =
            Properties::stored(serde_json::value::to_raw_value(&o.properties).unwrap()).unwrap();
        assert_eq!(
            stored.model(),
            o.properties.as_ref().and_then(Properties::model)
        );
        assert_eq!(stored.model().unwrap().label.as_deref(), Some("1"));
    }

    #[test]
    fn event_types_are_validated_names() {
        assert!(check(json!({"type": "add_to_cart", "unit_id": "u"})).is_ok());
        assert!(check(json!({"type": "Add To Cart", "unit_id": "u"})).is_err());
        assert!(check(json!({"type": "click", "unit_id": "u", "extra": 1})).is_err());
    }

    #[test]
    fn timestamps_outside_the_window_are_refused() {
        for ts in [
            "2999-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "2024-01-01T00:00:00Z",
            "2024-10-05T00:00:01Z",
        ] {
            let r = check(json!({"type": "x", "unit_id": "u", "timestamp": ts}));
            assert_eq!(field_of(r), "timestamp", "{ts}");
        }
        // Inside: six days ago and twenty hours ahead.
        for ts in ["2024-09-28T00:00:00Z", "2024-10-04T20:00:00Z"] {
            assert!(check(json!({"type": "x", "unit_id": "u", "timestamp": ts})).is_ok());
        }
    }

    #[test]
    fn numbers_beyond_their_bounds_are_refused() {
        let cases = [
            (
                json!({"type": "x", "unit_id": "u", "value": 1e200}),
                "value",
            ),
            (
                json!({"type": "x", "unit_id": "u", "value": -1e16}),
                "value",
            ),
            (
                json!({"type": "metric", "unit_id": "u", "properties": {"name": "m", "value": 1e16}}),
                "properties.value",
            ),
            (
                json!({"type": "impression", "unit_id": "u", "properties": {"response_time_ms": 1e308}}),
                "properties.response_time_ms",
            ),
            (
                json!({"type": "engagement", "unit_id": "u", "properties": {"item_id": "a", "dwell_time_ms": 9e7}}),
                "properties.dwell_time_ms",
            ),
            (
                json!({"type": "click", "unit_id": "u", "properties": {"item_id": "a", "rank": 1001}}),
                "properties.rank",
            ),
            (
                json!({"type": "impression", "unit_id": "u", "properties": {"results_count": 1e12}}),
                "properties.results_count",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(field_of(check(body.clone())), field, "{body}");
        }
        let edge = json!({"type": "x", "unit_id": "u", "value": -1e15});
        assert_eq!(check(edge).unwrap().value, Some(-1e15));
    }

    proptest::proptest! {
        /// Whatever a client sends, the decoder and the checks either refuse
        /// it with a field or produce an event within every bound.
        #[test]
        fn arbitrary_events_never_panic_and_accepted_ones_are_bounded(
            mut body in crate::domain::arbitrary::object_with(&[
                "type", "unit_id", "experiment", "variant", "value", "timestamp",
                "event_id", "session_id", "properties", "extra",
            ]),
            kind in proptest::sample::select(vec![
                "exposure", "impression", "click", "conversion", "engagement", "metric", "custom",
                "prediction", "outcome",
            ]),
            props in crate::domain::arbitrary::object_with(&[
                "item_id", "rank", "query", "response_time_ms", "results_count", "source",
                "dwell_time_ms", "action", "name", "value", "prediction_id", "model", "score",
                "label", "confidence", "latency_ms",
            ]),
        ) {
            // Often a plausible event, so the type-specific checks run too.
            if body.get("type").is_none_or(|_| kind.len() % 2 == 0) {
                body["type"] = json!(kind);
                body["unit_id"] = json!("u");
                body["properties"] = props;
            }
            let limits = EventLimits::default();
            let Ok(input) = serde_json::from_value::<EventIn>(body) else {
                return Ok(());
            };
            if let Ok(e) = input.check(now(), &limits, || "id".into()) {
                if let Some(v) = e.value {
                    proptest::prop_assert!(v.is_finite() && v.abs() <= limits.max_abs_value);
                }
                let p = e.properties.as_ref();
                let durations = [
                    p.and_then(Properties::response_time_ms),
                    p.and_then(Properties::dwell_time_ms),
                    p.and_then(Properties::latency_ms),
                ];
                if let Some(m) = p.and_then(Properties::model) {
                    for share in [m.score, m.confidence].into_iter().flatten() {
                        proptest::prop_assert!((0.0..=1.0).contains(&share));
                    }
                }
                for d in durations.into_iter().flatten() {
                    proptest::prop_assert!((0.0..=limits.max_duration_ms).contains(&d));
                }
                let received = e.received_ms;
                proptest::prop_assert!(e.timestamp_ms >= received - limits.max_age_ms);
                proptest::prop_assert!(e.timestamp_ms <= received + limits.max_skew_ms);
                proptest::prop_assert!(
                    p.is_none_or(|p| p.json().len() <= limits.max_property_bytes)
                );
            }
        }
    }

    #[test]
    fn large_property_bags_are_refused() {
        let big = "x".repeat(16 * 1024);
        let r = check(json!({"type": "x", "unit_id": "u", "properties": {"blob": big}}));
        assert_eq!(field_of(r), "properties");
        let fits = "x".repeat(16 * 1024 - 20);
        assert!(check(json!({"type": "x", "unit_id": "u", "properties": {"blob": fits}})).is_ok());
    }

    #[test]
    fn stored_events_round_trip() {
        let e = check(
            json!({"type": "conversion", "unit_id": "u", "value": 3, "properties": {"a": [1]}}),
        )
        .unwrap();
        let json = serde_json::to_vec(&crate::domain::EventRecordRef::from(&e)).unwrap();
        assert_eq!(json, serde_json::to_vec(&e).unwrap(), "stored as exported");
        let back =
            Event::try_from(serde_json::from_slice::<crate::domain::EventRecord>(&json).unwrap())
                .unwrap();
        assert_eq!(
            back,
            Event {
                client_id: false,
                ..e
            }
        );
    }
}
