//! Request bodies are JSON objects. serde's derive also reads a struct from
//! an array of its fields in order (`["cta", "CTA colour", [...]]`), a
//! shape the API neither documents nor wants. A body type derives with
//! `#[serde(remote = "Self")]`, which makes the derived code inherent
//! functions, and `objects_only!` implements the traits through them,
//! asking the decoder for a map: the same decoding, with an array refused
//! wherever the type appears.

/// Implements `Deserialize` (from a JSON object only) for each type, and
/// with `serialize:` first `Serialize` too, through the inherent functions
/// `#[serde(remote = "Self")]` derived.
#[macro_export]
macro_rules! objects_only {
    (serialize: $($ty:ty),* $(,)?) => {$(
        $crate::objects_only!($ty);
        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$ty>::serialize(self, s)
            }
        }
    )*};
    ($($ty:ty),* $(,)?) => {$(
        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Object;
                impl<'de> ::serde::de::Visitor<'de> for Object {
                    type Value = $ty;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str(concat!("an object (", stringify!($ty), ")"))
                    }
                    fn visit_map<A: ::serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$ty, A::Error> {
                        <$ty>::deserialize(::serde::de::value::MapAccessDeserializer::new(map))
                    }
                }
                d.deserialize_map(Object)
            }
        }
    )*};
}

#[cfg(test)]
mod tests {
    use crate::domain::{Bucketing, EventIn, ExperimentIn, Variant};

    #[test]
    fn a_body_type_is_read_from_an_object_only() {
        let variant: Variant = serde_json::from_str(r#"{"key": "a", "weight": 1}"#).unwrap();
        assert_eq!(variant.key.as_str(), "a");
        assert!(serde_json::from_str::<Variant>(r#"["a", 1]"#).is_err());
        let nested = r#"{"key": "k", "name": "n", "variants": [["a", 1], ["b", 1]]}"#;
        assert!(serde_json::from_str::<ExperimentIn>(nested).is_err());
        assert!(serde_json::from_str::<EventIn>(r#"[null, "click", "u"]"#).is_err());
        // An internally tagged enum would take its tag as an array's first
        // element.
        let tagged: Bucketing =
            serde_json::from_str(r#"{"scheme": "growthbook", "hash_version": 2}"#).unwrap();
        assert_eq!(tagged, Bucketing::Growthbook { hash_version: 2 });
        assert!(serde_json::from_str::<Bucketing>(r#"["growthbook", 2]"#).is_err());
        // Serialised as before.
        assert_eq!(
            serde_json::to_value(&variant).unwrap(),
            serde_json::json!({"key": "a", "weight": 1.0})
        );
    }
}
