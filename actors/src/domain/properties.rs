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
