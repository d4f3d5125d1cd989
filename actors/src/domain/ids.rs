//! Identifier newtypes. Each validates on construction (including when
//! deserialised), so a value of the type is always well-formed.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest unit id accepted, in characters (Unicode scalar values, as JSON
/// Schema's `maxLength` counts them, so the API document states it
/// exactly): at most 1,024 bytes of UTF-8.
pub const MAX_UNIT_ID_CHARS: usize = 256;

/// Why a text is not 1 to `max` printable characters.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NotPrintable {
    /// Empty, or more than `max` characters.
    Length,
    /// It holds a control character.
    Control,
}

/// The rule of unit ids, event ids, salts and layer keys: 1 to `max`
/// characters (as JSON Schema's `maxLength` counts them), none a control
/// character. One pass over the text, and none at all for one too long by
/// its bytes alone (a character is at most four).
pub(crate) fn check_printable(s: &str, max: usize) -> Result<(), NotPrintable> {
    if s.is_empty() || s.len() > 4 * max {
        return Err(NotPrintable::Length);
    }
    let mut chars = 0;
    for c in s.chars() {
        if c.is_control() {
            return Err(NotPrintable::Control);
        }
        chars += 1;
    }
    if chars > max {
        return Err(NotPrintable::Length);
    }
    Ok(())
}

/// `[a-z0-9_-]{1,64}`: the shape of every key (experiment, variant, metric).
fn is_key(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A UUIDv7 for now: 48 bits of Unix milliseconds, then random bits
/// from the thread's generator. `Uuid::now_v7` asks the kernel for
/// entropy on every call, a system call per event on the ingest path.
pub fn uuid_v7() -> uuid::Uuid {
    use rand::RngExt;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let random: [u8; 10] = rand::rng().random();
    uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid()
}

/// An event's de-duplication id: one abacus minted, kept as its UUID
/// rather than as 36 characters to format, allocate, free on the writer's
/// thread and parse back to store, or the text a client chose. Either
/// reads and compares as its text.
#[derive(Clone)]
pub enum EventId {
    /// A UUID, shown lowercase and hyphenated.
    Uuid(uuid::Uuid),
    /// Any other id, as sent.
    Text(Box<str>),
}

impl EventId {
    /// The id as text.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            EventId::Uuid(uuid) => uuid.hyphenated().to_string().into(),
            EventId::Text(text) => std::borrow::Cow::Borrowed(text),
        }
    }
}

impl From<&str> for EventId {
    fn from(text: &str) -> Self {
        EventId::Text(text.into())
    }
}

impl From<String> for EventId {
    fn from(text: String) -> Self {
        EventId::Text(text.into())
    }
}

impl PartialEq for EventId {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (EventId::Uuid(a), EventId::Uuid(b)) => a == b,
            (EventId::Text(a), EventId::Text(b)) => a == b,
            _ => self.text() == other.text(),
        }
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text(), f)
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EventId::Uuid(uuid) => s.collect_str(&uuid.hyphenated()),
            EventId::Text(text) => s.serialize_str(text),
        }
    }
}

/// Deserialises a `T` from borrowed text through its `TryFrom<&str>`,
/// without a `String` in between (keys and event types are read once per
/// event on the ingest path). `what` names it in errors.
pub(crate) fn deserialize_text<'de, D, T>(d: D, what: &'static str) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: for<'a> TryFrom<&'a str, Error = String>,
{
    struct Text<T>(&'static str, std::marker::PhantomData<T>);
    impl<T> serde::de::Visitor<'_> for Text<T>
    where
        T: for<'a> TryFrom<&'a str, Error = String>,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<T, E> {
            T::try_from(s).map_err(E::custom)
        }
    }
    d.deserialize_str(Text(what, std::marker::PhantomData))
}

/// What every text newtype here shares: it is looked up by `&str` in maps
/// and prints as its text.
macro_rules! text_impls {
    ($name:ident) => {
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
    };
}

macro_rules! key_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        ///
        /// Shared text: a clone is a reference count, so every event of an
        /// experiment can carry its key and variant without an allocation
        /// each (and without a free on another thread when it is stored).
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, utoipa::ToSchema)]
        #[schema(value_type = String, pattern = "^[a-z0-9_-]{1,64}$")]
        pub struct $name(Arc<str>);

        impl $name {
            /// The key as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = String;
            fn try_from(s: &str) -> Result<Self, String> {
                if is_key(s) {
                    Ok(Self(s.into()))
                } else {
                    Err(format!(
                        concat!("invalid ", $what, " '{}': expected 1-64 characters of a-z, 0-9, _ or -"),
                        s.escape_debug()
                    ))
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                Self::try_from(s.as_str())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0.to_string()
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        /// Read from borrowed text: one allocation, not a `String` first.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_text(d, $what)
            }
        }

        text_impls!($name);
    };
}

/// An id abacus mints: a fixed prefix and a UUIDv7 in hex, so ids sort
/// by creation time and say what they name. Decoding refuses any other
/// shape.
macro_rules! minted_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $pattern:literal, $example:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(value_type = String, pattern = $pattern, example = $example)]
        pub struct $name(Box<str>);

        impl $name {
            /// A new id.
            pub fn mint() -> Self {
                Self(format!(concat!($prefix, "{}"), uuid::Uuid::now_v7().simple()).into())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                let rest = s.strip_prefix($prefix).unwrap_or_default();
                if rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(Self(s.into_boxed_str()))
                } else {
                    Err(format!(concat!("invalid id '{}': expected ", $prefix, " and 32 hex digits"), s.escape_debug()))
                }
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0.into_string()
            }
        }

        text_impls!($name);
    };
}

minted_id!(
    /// An alert rule's id: `rule_` and 32 hex digits.
    RuleId,
    "rule_",
    "^rule_[0-9a-fA-F]{32}$",
    "rule_0192f0c4a6e07c3b9d1e2f3a4b5c6d7e"
);
minted_id!(
    /// An alert's id: `alert_` and 32 hex digits.
    AlertId,
    "alert_",
    "^alert_[0-9a-fA-F]{32}$",
    "alert_0192f0c4a6e07c3b9d1e2f3a4b5c6d7e"
);
minted_id!(
    /// A webhook subscription's id: `wh_` and 32 hex digits.
    WebhookId,
    "wh_",
    "^wh_[0-9a-fA-F]{32}$",
    "wh_0192f0c4a6e07c3b9d1e2f3a4b5c6d7e"
);

minted_id!(
    /// An audit log entry's id: `audit_` and 32 hex digits (a UUIDv7, so
    /// ids sort by time).
    AuditId,
    "audit_",
    "^audit_[0-9a-fA-F]{32}$",
    "audit_0192f0c4a6e07c3b9d1e2f3a4b5c6d7e"
);
minted_id!(
    /// An API key's id: `key_` and 32 hex digits.
    KeyId,
    "key_",
    "^key_[0-9a-fA-F]{32}$",
    "key_0192f0c4a6e07c3b9d1e2f3a4b5c6d7e"
);

key_type!(
    /// Unique, immutable key of an experiment.
    ExperimentKey,
    "experiment key"
);
key_type!(
    /// Unique, immutable key of a project.
    ProjectKey,
    "project key"
);
key_type!(
    /// Key of a variant, unique within its experiment.
    VariantKey,
    "variant key"
);
key_type!(
    /// Key of a metric: an event type or a `metric` event's name.
    MetricKey,
    "metric key"
);

impl VariantKey {
    /// A key abacus names itself (a holdout's `holdout` and `exposed`).
    pub(crate) fn builtin(name: &'static str) -> Self {
        Self(name.into())
    }
}

impl MetricKey {
    /// A key abacus names itself: a model experiment's metrics
    /// (`model_accuracy`) and the measures its join counts
    /// (`model.correct`, outside the key alphabet, so that no event a
    /// client sends can count towards them; see domain/model.rs).
    pub(crate) fn builtin(name: &'static str) -> Self {
        Self(name.into())
    }
}

/// The thing being randomised: a user, device, session or account id.
/// 1 to 256 characters without control characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = r"^[^\u0000-\u001f\u007f-\u009f]{1,256}$")]
pub struct UnitId(Box<str>);

impl UnitId {
    /// Checks `s` without allocating; the hot path validates borrowed ids.
    pub fn check(s: &str) -> Result<(), String> {
        check_printable(s, MAX_UNIT_ID_CHARS).map_err(|why| match why {
            NotPrintable::Length => format!("unit_id must be 1-{MAX_UNIT_ID_CHARS} characters"),
            NotPrintable::Control => "unit_id must not contain control characters".to_owned(),
        })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UnitId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::check(&s)?;
        Ok(Self(s.into_boxed_str()))
    }
}

impl From<UnitId> for String {
    fn from(u: UnitId) -> String {
        u.0.into_string()
    }
}

impl Borrow<str> for UnitId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn minted_uuids_are_version_7_carry_the_time_and_differ() {
        let before = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let (a, b) = (uuid_v7(), uuid_v7());
        assert_ne!(a, b);
        assert_eq!(a.get_version_num(), 7);
        let (secs, _) = a.get_timestamp().expect("v7 carries a time").to_unix();
        assert!((secs as i64 * 1000 - before).abs() < 2000, "{a}");
    }

    use super::*;

    #[test]
    fn keys_accept_the_documented_alphabet_only() {
        for ok in ["a", "homepage_cta", "v-2", &"x".repeat(64)] {
            assert!(ExperimentKey::try_from(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Upper",
            "with space",
            "dot.ted",
            "ümlaut",
            &"x".repeat(65),
        ] {
            assert!(ExperimentKey::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_validate_when_deserialised() {
        assert!(serde_json::from_str::<VariantKey>("\"ok_key\"").is_ok());
        let err = serde_json::from_str::<VariantKey>("\"Bad Key\"").unwrap_err();
        assert!(err.to_string().contains("invalid variant key"), "{err}");
    }

    #[test]
    fn unit_ids_are_bounded_and_printable() {
        assert!(UnitId::check("alice").is_ok());
        assert!(UnitId::check("ünïcödé user 42").is_ok());
        assert!(UnitId::check("").is_err());
        assert!(UnitId::check(&"u".repeat(257)).is_err());
        assert!(UnitId::check("tab\there").is_err());
        assert!(UnitId::check("c1 control \u{85}").is_err());
        // Characters, as the API document's maxLength counts them: 256
        // four-byte characters are 1,024 bytes and still one unit id.
        assert!(UnitId::check(&"😀".repeat(256)).is_ok());
        assert!(UnitId::check(&"😀".repeat(257)).is_err());
    }
}
