//! An event's properties: the JSON object as the client sent it, kept as
//! its text, with the few fields abacus counts read out once.
//!
//! A parsed map per event cost the handlers an allocation per key and
//! value, and the writers a lookup per counted field, a re-encoding to
//! store it and a free of every node allocated on another thread: together
//! about a fifth of the server's time under batched ingest. The text is
//! one allocation, stored and exported as it came.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use super::MetricKey;

/// An event's `properties` object and what abacus counts from it.
#[derive(Debug, Clone)]
pub struct Properties {
    json: Box<RawValue>,
    counted: Counted,
}

/// The properties abacus's aggregates read, taken from the object once.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Counted {
    /// A metric event's name.
    pub name: Option<MetricKey>,
    /// An engagement's action.
    pub action: Option<Box<str>>,
    /// A click's rank.
    pub rank: Option<u64>,
    /// An impression's or click's `response_time_ms`.
    pub response_time_ms: Option<f64>,
    /// An engagement's `dwell_time_ms`.
    pub dwell_time_ms: Option<f64>,
    /// A prediction's or outcome's fields: boxed, so that every other
    /// event carries one pointer for them.
    pub model: Option<Box<ModelFields>>,
}

/// What a `prediction` or an `outcome` says, as the join reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelFields {
    /// The id an outcome names its prediction by.
    pub prediction_id: Box<str>,
    /// The model that made a prediction, as its client names it.
    pub model: Option<Box<str>>,
    /// A classifier's probability (see [`ModelFields::guess`]).
    pub score: Option<f64>,
    /// The predicted or true label, as [`Slot::label`] spells it.
    pub label: Option<Box<str>>,
    /// The probability the model gives its predicted `label`.
    pub confidence: Option<f64>,
    /// How long the model took, in ms.
    pub latency_ms: Option<f64>,
}

impl ModelFields {
    /// A classifier's prediction as a label and the probability that it
    /// is right: `label` with `confidence` (or `score`, when no confidence
    /// is given); without a label, a binary prediction whose `score` is the
    /// probability of class `1`. `None` for a regressor's prediction.
    pub fn guess(&self) -> Option<(&str, f64)> {
        match (&self.label, self.confidence, self.score) {
            (Some(label), Some(p), _) | (Some(label), None, Some(p)) => Some((label, p)),
            (None, _, Some(s)) if s >= 0.5 => Some(("1", s)),
            (None, _, Some(s)) => Some(("0", 1.0 - s)),
            _ => None,
        }
    }
}

impl Properties {
    /// Properties whose counted fields `check` has already read.
    pub(super) fn checked(json: Box<RawValue>, counted: Counted) -> Self {
        Self { json, counted }
    }

    /// Reads back stored properties: `json` must be an object; a counted
    /// field of the wrong type or shape (which ingestion refuses) counts as
    /// absent.
    pub fn stored(json: Box<RawValue>) -> Result<Self, String> {
        let fields = Fields::of(&json)?;
        let number = |slot: Slot<'_>| slot.number().and_then(Result::ok);
        let model = fields.prediction_id.text().and_then(Result::ok).map(|id| {
            Box::new(ModelFields {
                prediction_id: id.into(),
                model: fields.model.text().and_then(Result::ok).map(Into::into),
                score: number(fields.score),
                label: fields.label.label().and_then(Result::ok),
                confidence: number(fields.confidence),
                latency_ms: number(fields.latency_ms),
            })
        });
        let counted = Counted {
            name: fields
                .name
                .text()
                .and_then(Result::ok)
                .and_then(|n| MetricKey::try_from(&*n).ok()),
            action: fields.action.text().and_then(Result::ok).map(Into::into),
            rank: fields.rank.count().and_then(Result::ok),
            response_time_ms: fields.response_time_ms.number().and_then(Result::ok),
            dwell_time_ms: fields.dwell_time_ms.number().and_then(Result::ok),
            model,
        };
        Ok(Self { json, counted })
    }

    /// The object's JSON text, as sent.
    pub fn json(&self) -> &str {
        self.json.get()
    }

    /// A metric event's `name`.
    pub fn name(&self) -> Option<&str> {
        self.counted.name.as_ref().map(MetricKey::as_str)
    }

    /// An engagement's `action`.
    pub fn action(&self) -> Option<&str> {
        self.counted.action.as_deref()
    }

    /// A click's `rank`.
    pub fn rank(&self) -> Option<u64> {
        self.counted.rank
    }

    /// `response_time_ms`.
    pub fn response_time_ms(&self) -> Option<f64> {
        self.counted.response_time_ms
    }

    /// `dwell_time_ms`.
    pub fn dwell_time_ms(&self) -> Option<f64> {
        self.counted.dwell_time_ms
    }

    /// A prediction's or outcome's fields (with a `prediction_id`).
    pub fn model(&self) -> Option<&ModelFields> {
        self.counted.model.as_deref()
    }

    /// A prediction's `latency_ms`.
    pub fn latency_ms(&self) -> Option<f64> {
        self.model().and_then(|m| m.latency_ms)
    }
}

#[cfg(test)]
impl Properties {
    /// Stored properties of a JSON object: tests build events with them.
    pub(crate) fn of(object: serde_json::Value) -> Self {
        let json = serde_json::value::to_raw_value(&object).expect("JSON");
        Self::stored(json).expect("an object")
    }
}

/// Equal when the text is: the counted fields follow from it.
impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        self.json.get() == other.json.get()
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

/// The properties the event rules and the aggregates read, each as the
/// JSON text it was sent as; every other key is skipped unparsed.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct Fields<'a> {
    #[serde(borrow)]
    pub item_id: Slot<'a>,
    #[serde(borrow)]
    pub rank: Slot<'a>,
    #[serde(borrow)]
    pub query: Slot<'a>,
    #[serde(borrow)]
    pub response_time_ms: Slot<'a>,
    #[serde(borrow)]
    pub source: Slot<'a>,
    #[serde(borrow)]
    pub results_count: Slot<'a>,
    #[serde(borrow)]
    pub dwell_time_ms: Slot<'a>,
    #[serde(borrow)]
    pub action: Slot<'a>,
    #[serde(borrow)]
    pub name: Slot<'a>,
    #[serde(borrow)]
    pub value: Slot<'a>,
    #[serde(borrow)]
    pub prediction_id: Slot<'a>,
    #[serde(borrow)]
    pub model: Slot<'a>,
    #[serde(borrow)]
    pub score: Slot<'a>,
    #[serde(borrow)]
    pub label: Slot<'a>,
    #[serde(borrow)]
    pub confidence: Slot<'a>,
    #[serde(borrow)]
    pub latency_ms: Slot<'a>,
}

impl<'a> Fields<'a> {
    /// The fields of `json`, which must be an object with each of them at
    /// most once.
    pub fn of(json: &'a RawValue) -> Result<Self, String> {
        if !json.get().trim_start().starts_with('{') {
            return Err("properties must be an object".to_owned());
        }
        serde_json::from_str(json.get()).map_err(|e| format!("properties: {e}"))
    }
}

/// One property as sent, `null` included (so that a type rule refuses
/// it), or `None` when the key is absent.
#[derive(Default, Clone, Copy)]
pub(super) struct Slot<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Slot<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(|raw| Slot(Some(raw)))
    }
}

impl<'a> Slot<'a> {
    /// The value as a string, `Err` when it is not one.
    pub fn text(self) -> Option<Result<Cow<'a, str>, ()>> {
        let raw = self.0?.get();
        Some(match serde_json::from_str::<&str>(raw) {
            Ok(s) => Ok(Cow::Borrowed(s)),
            // A string with escapes cannot be borrowed.
            Err(_) => serde_json::from_str::<String>(raw)
                .map(Cow::Owned)
                .map_err(drop),
        })
    }

    /// The value as a finite number, `Err` when it is not one.
    pub fn number(self) -> Option<Result<f64, ()>> {
        let raw = self.0?.get();
        Some(
            serde_json::from_str::<f64>(raw)
                .ok()
                .filter(|n| n.is_finite())
                .ok_or(()),
        )
    }

    /// The value as a non-negative integer, `Err` when it is not one.
    pub fn count(self) -> Option<Result<u64, ()>> {
        Some(serde_json::from_str::<u64>(self.0?.get()).map_err(drop))
    }

    /// A class label: a non-empty string as it is, an integer as its
    /// digits, `true` and `false` as `1` and `0` (so that `true`, `1` and
    /// `"1"` are one label); `Err` for anything else.
    pub fn label(self) -> Option<Result<Box<str>, ()>> {
        let raw = self.0?.get();
        if let Some(Ok(text)) = self.text() {
            return Some(if text.is_empty() {
                Err(())
            } else {
                Ok(text.into())
            });
        }
        Some(match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(serde_json::Value::Bool(b)) => Ok(if b { "1" } else { "0" }.into()),
            Ok(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => {
                Ok(n.to_string().into())
            }
            _ => Err(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).expect("JSON")
    }

    #[test]
    fn stored_properties_keep_their_text_and_read_the_counted_fields() {
        let p = Properties::stored(raw(
            r#"{"item_id": "a", "rank": 3, "response_time_ms": 12.5, "action": "re\"ad", "x": [1, {"y": null}]}"#,
        ))
        .unwrap();
        assert_eq!(p.rank(), Some(3));
        assert_eq!(p.response_time_ms(), Some(12.5));
        assert_eq!(p.action(), Some("re\"ad"));
        assert_eq!((p.name(), p.dwell_time_ms()), (None, None));
        assert!(p.json().starts_with(r#"{"item_id": "a""#));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"item_id": "a", "rank": 3, "response_time_ms": 12.5, "action": "re\"ad", "x": [1, {"y": null}]}"#
        );
    }

    #[test]
    fn stored_fields_of_the_wrong_type_count_as_absent() {
        let p = Properties::stored(raw(r#"{"rank": "3", "dwell_time_ms": null}"#)).unwrap();
        assert_eq!((p.rank(), p.dwell_time_ms()), (None, None));
    }

    #[test]
    fn only_objects_with_each_field_once_are_properties() {
        for bad in ["[1]", "3", r#""x""#, r#"{"rank": 1, "rank": 2}"#] {
            assert!(Properties::stored(raw(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn slots_tell_absent_wrong_and_right_apart() {
        let json = raw(r#"{"rank": 2.5, "name": null, "query": "a\nb", "value": -1}"#);
        let f = Fields::of(&json).unwrap();
        assert!(f.item_id.text().is_none());
        assert_eq!(f.rank.count(), Some(Err(())));
        assert_eq!(f.rank.number(), Some(Ok(2.5)));
        assert_eq!(f.name.text(), Some(Err(())));
        assert_eq!(f.query.text(), Some(Ok(Cow::Owned("a\nb".to_owned()))));
        assert_eq!(f.value.count(), Some(Err(())));
        assert_eq!(f.value.number(), Some(Ok(-1.0)));
    }
}
