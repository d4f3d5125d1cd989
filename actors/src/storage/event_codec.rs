//! The binary encoding of a stored event. The `events` column family holds
//! every event for the whole retention period, and JSON spends most of its
//! 220-450 bytes on field names, quotes and digits; this layout keeps a
//! typical event under 60 bytes before LZ4 sees it (the write-ahead log,
//! the memtable and the block cache hold values uncompressed). Values
//! written before it ([`VALUE_V1`], JSON) stay readable through
//! [`decode`], so no store has to be rewritten.
//!
//! Layout after the version byte:
//!
//! ```text
//! [flags] [type] [experiment]? [variant]? [seq] [timestamp] [received]?
//! [event id] [unit id] [value]? [session id]? [properties]?
//! ```
//!
//! - `flags`: one bit per optional field present, whether the value is
//!   stored as an `f32`, and whether `received_ms == timestamp_ms`.
//! - `type`: 0..=5 for the built-in types, [`CUSTOM`] then a string.
//! - strings: a LEB128 length, then UTF-8.
//! - `seq`: LEB128; `timestamp`: zigzag LEB128; `received`: zigzag LEB128
//!   delta from the timestamp, wrapping.
//! - event id: a LEB128 tag: [`ID_UUID`] then 16 bytes, [`ID_UUID_AT`] then
//!   the zigzag delta of the UUID's first 48 bits from `received_ms` and
//!   its last 10 bytes, or `2 + len` then the text.
//! - value: `f32` or `f64`, little-endian.
//! - properties: a LEB128 length, then their JSON.
//!
//! The fields an experiment's events share (flags, type, experiment,
//! variant) come first and together, so LZ4 can replace them with one
//! back-reference to the previous event in the block.

use serde_json::value::RawValue;
use uuid::Uuid;

use super::VALUE_V1;
use crate::domain::{
    Event, EventId, EventRecord, EventType, ExperimentKey, Properties, VariantKey,
};

/// First byte of a binary event value.
pub(crate) const VALUE_V2: u8 = 2;

const HAS_EXPERIMENT: u8 = 1 << 0;
const HAS_VARIANT: u8 = 1 << 1;
const HAS_VALUE: u8 = 1 << 2;
/// The value is stored in 4 bytes: it is an `f32` exactly (12.5, small
/// integers), as CBOR's preferred serialisation shortens floats.
const VALUE_IS_F32: u8 = 1 << 3;
const HAS_SESSION: u8 = 1 << 4;
const HAS_PROPERTIES: u8 = 1 << 5;
const ASSIGNMENT_MISMATCH: u8 = 1 << 6;
/// Events without a client timestamp (most of them) are stamped at
/// receipt, so the second timestamp usually costs nothing.
const RECEIVED_AT_TIMESTAMP: u8 = 1 << 7;

/// Type byte of a custom event; its name follows.
const CUSTOM: u8 = 255;
const BUILT_IN: [EventType; 8] = [
    EventType::Exposure,
    EventType::Impression,
    EventType::Click,
    EventType::Conversion,
    EventType::Engagement,
    EventType::Metric,
    EventType::Prediction,
    EventType::Outcome,
];

/// Event id tag: a canonical UUID as its 16 bytes rather than 36 characters.
const ID_UUID: u64 = 0;
/// Event id tag: a canonical UUID whose first 48 bits are a millisecond
/// time near `received_ms`, stored as the difference. Ids abacus mints are
/// UUIDv7 taken at receipt, so their time costs a byte instead of six.
const ID_UUID_AT: u64 = 1;
/// Event id tag of a text id: its length plus this.
const ID_TEXT: u64 = 2;
/// The largest zigzag difference [`ID_UUID_AT`] stores: its LEB128 is at
/// most 5 bytes, shorter than the 6 bytes of time it replaces.
const MAX_ID_TIME_DELTA: u64 = (1 << 35) - 1;
const UUID_TIME_BITS: u32 = 48;

/// Appends the binary value of `event`. `client_id` is not stored: it
/// matters only until the event is committed. A non-finite value (which
/// `EventIn::check` never lets through) is left out, as JSON's `null` did.
pub(crate) fn encode(event: &Event, out: &mut Vec<u8>) {
    let value = event.value.filter(|v| v.is_finite());
    // Exact as an f32 when converting back gives the same bits (so -0.0
    // stays -0.0 and nothing rounds).
    let short = value.and_then(|v| {
        let s = v as f32;
        (f64::from(s).to_bits() == v.to_bits()).then_some(s)
    });
    let mut flags = 0;
    for (present, bit) in [
        (event.experiment.is_some(), HAS_EXPERIMENT),
        (event.variant.is_some(), HAS_VARIANT),
        (value.is_some(), HAS_VALUE),
        (short.is_some(), VALUE_IS_F32),
        (event.session_id.is_some(), HAS_SESSION),
        (event.properties.is_some(), HAS_PROPERTIES),
        (event.assignment_mismatch, ASSIGNMENT_MISMATCH),
        (
            event.received_ms == event.timestamp_ms,
            RECEIVED_AT_TIMESTAMP,
        ),
    ] {
        if present {
            flags |= bit;
        }
    }
    out.push(VALUE_V2);
    out.push(flags);
    match BUILT_IN.iter().position(|t| *t == event.kind) {
        // Six built-in types: the index fits a byte.
        Some(i) => out.push(i as u8),
        None => {
            out.push(CUSTOM);
            put_bytes(out, event.kind.as_str().as_bytes());
        }
    }
    if let Some(e) = &event.experiment {
        put_bytes(out, e.as_str().as_bytes());
    }
    if let Some(v) = &event.variant {
        put_bytes(out, v.as_str().as_bytes());
    }
    put_varint(out, event.seq);
    put_varint(out, zigzag(event.timestamp_ms));
    if event.received_ms != event.timestamp_ms {
        put_varint(
            out,
            zigzag(event.received_ms.wrapping_sub(event.timestamp_ms)),
        );
    }
    match &event.event_id {
        EventId::Uuid(uuid) => put_uuid(out, uuid, event.received_ms),
        EventId::Text(text) => match canonical_uuid(text) {
            Some(uuid) => put_uuid(out, &uuid, event.received_ms),
            None => {
                put_varint(out, text.len() as u64 + ID_TEXT);
                out.extend_from_slice(text.as_bytes());
            }
        },
    }
    put_bytes(out, event.unit_id.as_bytes());
    match (short, value) {
        (Some(s), _) => out.extend_from_slice(&s.to_le_bytes()),
        (None, Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
        (None, None) => {}
    }
    if let Some(s) = &event.session_id {
        put_bytes(out, s.as_bytes());
    }
    if let Some(p) = &event.properties {
        put_bytes(out, p.json().as_bytes());
    }
}

/// Reads a stored event value of either version. Never panics, whatever
/// the bytes: a corrupt value is an error the store reports, not a crash,
/// and the keys of a decoded event are as valid as the JSON path makes them.
pub(crate) fn decode(bytes: &[u8]) -> Result<Event, String> {
    match bytes.split_first() {
        Some((&VALUE_V1, json)) => serde_json::from_slice::<EventRecord>(json)
            .map_err(|e| e.to_string())
            .and_then(Event::try_from),
        Some((&VALUE_V2, rest)) => decode_v2(&mut Reader(rest)),
        Some((version, _)) => Err(format!("unknown event value version {version}")),
        None => Err("empty event value".to_owned()),
    }
}

fn decode_v2(r: &mut Reader<'_>) -> Result<Event, String> {
    let flags = r.byte("flags")?;
    let has = |bit: u8| flags & bit != 0;
    if has(VALUE_IS_F32) && !has(HAS_VALUE) {
        return Err("an f32 value flag without a value".to_owned());
    }
    let kind = match r.byte("type")? {
        CUSTOM => EventType::try_from(r.text("type")?)?,
        i => BUILT_IN
            .get(usize::from(i))
            .cloned()
            .ok_or_else(|| format!("unknown event type byte {i}"))?,
    };
    let experiment = if has(HAS_EXPERIMENT) {
        Some(ExperimentKey::try_from(r.text("experiment")?)?)
    } else {
        None
    };
    let variant = if has(HAS_VARIANT) {
        Some(VariantKey::try_from(r.text("variant")?)?)
    } else {
        None
    };
    let seq = r.varint("seq")?;
    let timestamp_ms = unzigzag(r.varint("timestamp")?);
    let received_ms = if has(RECEIVED_AT_TIMESTAMP) {
        timestamp_ms
    } else {
        timestamp_ms.wrapping_add(unzigzag(r.varint("received")?))
    };
    let event_id = read_event_id(r, received_ms)?;
    let unit_id = r.text("unit_id")?.into();
    let value = match (has(HAS_VALUE), has(VALUE_IS_F32)) {
        (false, _) => None,
        (true, true) => Some(f64::from(f32::from_le_bytes(r.array("value")?))),
        (true, false) => Some(f64::from_le_bytes(r.array("value")?)),
    };
    if value.is_some_and(|v| !v.is_finite()) {
        return Err("a non-finite value".to_owned());
    }
    let session_id = if has(HAS_SESSION) {
        Some(r.text("session_id")?.into())
    } else {
        None
    };
    let properties = if has(HAS_PROPERTIES) {
        let json = serde_json::from_slice::<Box<RawValue>>(r.bytes("properties")?)
            .map_err(|e| format!("properties: {e}"))?;
        Some(Properties::stored(json)?)
    } else {
        None
    };
    if !r.0.is_empty() {
        return Err(format!("{} bytes after the event", r.0.len()));
    }
    Ok(Event {
        seq,
        event_id,
        kind,
        unit_id,
        experiment,
        variant,
        value,
        timestamp_ms,
        received_ms,
        session_id,
        properties,
        assignment_mismatch: has(ASSIGNMENT_MISMATCH),
        client_id: false,
    })
}

fn put_uuid(out: &mut Vec<u8>, uuid: &Uuid, received_ms: i64) {
    let bytes = uuid.as_bytes();
    let (time, rest) = bytes.split_at(6);
    let time = time.iter().fold(0i64, |t, &b| (t << 8) | i64::from(b));
    let delta = zigzag(time.wrapping_sub(received_ms));
    if delta <= MAX_ID_TIME_DELTA {
        put_varint(out, ID_UUID_AT);
        put_varint(out, delta);
        out.extend_from_slice(rest);
    } else {
        put_varint(out, ID_UUID);
        out.extend_from_slice(bytes);
    }
}

fn read_event_id(r: &mut Reader<'_>, received_ms: i64) -> Result<EventId, String> {
    let bytes: [u8; 16] = match r.varint("event_id")? {
        ID_UUID => r.array("event_id")?,
        ID_UUID_AT => {
            let time = received_ms.wrapping_add(unzigzag(r.varint("event_id")?));
            if !(0..1 << UUID_TIME_BITS).contains(&time) {
                return Err(format!("event_id time {time} out of range"));
            }
            let rest: [u8; 10] = r.array("event_id")?;
            let mut bytes = [0; 16];
            bytes[..6].copy_from_slice(&time.to_be_bytes()[2..]);
            bytes[6..].copy_from_slice(&rest);
            bytes
        }
        tag => {
            let len = usize::try_from(tag - ID_TEXT).map_err(|e| format!("event_id: {e}"))?;
            let text = r.take(len, "event_id")?;
            return std::str::from_utf8(text)
                .map(EventId::from)
                .map_err(|e| format!("event_id: {e}"));
        }
    };
    Ok(EventId::Uuid(Uuid::from_bytes(bytes)))
}

/// `id` as a UUID if it is one in the exact text a UUID prints as
/// (lowercase, hyphenated), so that decoding restores the same text.
fn canonical_uuid(id: &str) -> Option<Uuid> {
    if id.len() != 36 {
        return None;
    }
    let uuid = Uuid::try_parse(id).ok()?;
    let mut buffer = Uuid::encode_buffer();
    (uuid.hyphenated().encode_lower(&mut buffer) == id).then_some(uuid)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Small magnitudes of either sign become small unsigned numbers, so that
/// LEB128 keeps them short.
fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    (n >> 1) as i64 ^ -((n & 1) as i64)
}

/// The unread rest of a value; every read checks the length first, so a
/// short or garbled value is an error, never a panic or a huge allocation.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err(format!("{what}: value truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(format!("{what}: varint overflows 64 bits"));
            }
            n |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(format!("{what}: varint longer than 10 bytes"))
    }

    /// A length-prefixed byte string.
    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = self.varint(what)?;
        let len = usize::try_from(len).map_err(|e| format!("{what}: {e}"))?;
        self.take(len, what)
    }

    fn text(&mut self, what: &str) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes(what)?).map_err(|e| format!("{what}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use uuid::Builder;

    use super::*;
    use crate::domain::{arbitrary, EventRecordRef};

    fn round_trip(e: &Event) -> Event {
        let mut out = Vec::new();
        encode(e, &mut out);
        decode(&out).unwrap()
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-z0-9_-]{1,64}"
    }

    fn kind() -> impl Strategy<Value = EventType> {
        let built_in = prop::sample::select(BUILT_IN.to_vec());
        let named = key().prop_map(|s| EventType::try_from(&*s).unwrap());
        prop_oneof![built_in, named]
    }

    /// Finite numbers, weighted to the shapes the value encoding tells
    /// apart: exact f32s, integers, zeros of both signs, extremes.
    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>().prop_filter("values are finite", |v| v.is_finite()),
            any::<f32>()
                .prop_filter("values are finite", |v| v.is_finite())
                .prop_map(f64::from),
            any::<i32>().prop_map(f64::from),
            prop::sample::select(vec![
                0.0,
                -0.0,
                12.5,
                0.1,
                1e15,
                -1e15,
                f64::MAX,
                f64::MIN,
                f64::MIN_POSITIVE,
                5e-324,
                f64::from(f32::MAX),
                f64::from(f32::MIN_POSITIVE) / 2.0,
            ]),
        ]
    }

    /// A time: mostly in the range a UUID's 48 bits can hold, sometimes
    /// anything an `i64` can be.
    fn time() -> impl Strategy<Value = i64> {
        prop_oneof![
            3 => 0i64..1 << UUID_TIME_BITS,
            1 => any::<i64>(),
            1 => prop::sample::select(vec![i64::MIN, i64::MAX, -1, 0, 1 << UUID_TIME_BITS]),
        ]
    }

    /// An event id of one of the shapes the encoding tells apart, given
    /// the event's `received_ms`.
    fn event_id(shape: u8, bytes: [u8; 16], near: i64, text: String, received_ms: i64) -> EventId {
        let uuid = Uuid::from_bytes(bytes);
        EventId::from(match shape {
            // A minted id: a UUIDv7 whose time is about `received_ms`.
            0 => {
                let time = received_ms.wrapping_add(near) as u64 & ((1 << UUID_TIME_BITS) - 1);
                let rest: [u8; 10] = bytes[6..].try_into().unwrap();
                return EventId::Uuid(Builder::from_unix_timestamp_millis(time, &rest).into_uuid());
            }
            // A client's id that happens to be a UUID.
            1 => uuid.hyphenated().to_string(),
            // UUIDs in another spelling are kept as text.
            2 => uuid.hyphenated().to_string().to_uppercase(),
            3 => uuid.simple().to_string(),
            4 => uuid.braced().to_string(),
            _ => text,
        })
    }

    fn event() -> impl Strategy<Value = Event> {
        let ids = (
            any::<u64>(),
            0u8..6,
            any::<[u8; 16]>(),
            -3i64..3,
            "\\PC{0,40}",
            "\\PC{0,40}",
        );
        let times = (time(), 0u8..3, -100_000i64..100_000, any::<i64>());
        let keys = (kind(), prop::option::of(key()), prop::option::of(key()));
        let properties = prop::collection::btree_map("[a-z_]{1,10}", arbitrary::json(), 0..4)
            .prop_map(|map| Properties::of(serde_json::Value::Object(map.into_iter().collect())));
        let rest = (
            prop::option::of(value()),
            prop::option::of("\\PC{0,40}"),
            prop::option::of(properties),
            any::<bool>(),
            any::<bool>(),
        );
        (ids, times, keys, rest).prop_map(
            |(
                (seq, id_shape, id_bytes, near, id_text, unit),
                (timestamp_ms, received_shape, delta, anytime),
                (kind, experiment, variant),
                (value, session_id, properties, assignment_mismatch, client_id),
            )| {
                let received_ms = match received_shape {
                    0 => timestamp_ms,
                    1 => timestamp_ms.wrapping_add(delta),
                    _ => anytime,
                };
                Event {
                    seq,
                    event_id: event_id(id_shape, id_bytes, near, id_text, received_ms),
                    kind,
                    unit_id: unit.into(),
                    experiment: experiment.map(|k| ExperimentKey::try_from(k).unwrap()),
                    variant: variant.map(|k| VariantKey::try_from(k).unwrap()),
                    value,
                    timestamp_ms,
                    received_ms,
                    session_id: session_id.map(Into::into),
                    properties,
                    assignment_mismatch,
                    client_id,
                }
            },
        )
    }

    proptest! {
        #[test]
        fn events_survive_their_binary_value(e in event(), junk in prop::collection::vec(any::<u8>(), 0..4)) {
            // `encode` appends: what is already in the buffer stays.
            let mut out = junk.clone();
            encode(&e, &mut out);
            prop_assert_eq!(&out[..junk.len()], &junk[..]);
            let value = &out[junk.len()..];
            prop_assert_eq!(value[0], VALUE_V2);
            let back = decode(value).unwrap();
            prop_assert_eq!(back.value.map(f64::to_bits), e.value.map(f64::to_bits));
            prop_assert_eq!(back, Event { client_id: false, ..e });
            for end in 0..value.len() {
                prop_assert!(decode(&value[..end]).is_err(), "a value cut at {} decodes", end);
            }
        }

        #[test]
        fn arbitrary_bytes_decode_to_an_error_or_a_valid_event(
            bytes in prop::collection::vec(any::<u8>(), 0..200)
        ) {
            let versioned = [&[VALUE_V2][..], &bytes].concat();
            for value in [&bytes[..], &versioned] {
                if let Ok(e) = decode(value) {
                    prop_assert!(e.value.is_none_or(f64::is_finite));
                }
            }
        }

        #[test]
        fn damaged_values_decode_to_an_error_or_a_valid_event(
            e in event(), at in any::<prop::sample::Index>(), byte: u8
        ) {
            let mut out = Vec::new();
            encode(&e, &mut out);
            let at = at.index(out.len());
            out[at] = byte;
            if let Ok(e) = decode(&out) {
                prop_assert!(e.value.is_none_or(f64::is_finite));
            }
        }
    }

    fn full_event() -> Event {
        Event {
            seq: 42,
            event_id: "client-id".into(),
            experiment: Some(ExperimentKey::try_from("checkout").unwrap()),
            variant: Some(VariantKey::try_from("treatment").unwrap()),
            value: Some(0.1),
            timestamp_ms: 1_767_225_600_000,
            received_ms: 1_767_225_601_234,
            session_id: Some("s1".into()),
            properties: Some(crate::domain::Properties::of(
                serde_json::json!({"item_id": "sku-1", "nested": [1, 2.5, null]}),
            )),
            assignment_mismatch: true,
            ..Event::sample("add_to_cart", "u123456")
        }
    }

    #[test]
    fn json_values_written_before_the_binary_encoding_still_decode() {
        let e = Event {
            client_id: true,
            ..full_event()
        };
        let mut v1 = vec![VALUE_V1];
        serde_json::to_writer(&mut v1, &EventRecordRef::from(&e)).unwrap();
        assert_eq!(
            decode(&v1).unwrap(),
            Event {
                client_id: false,
                ..e
            }
        );
        assert_eq!(round_trip(&full_event()), full_event());
    }

    #[test]
    fn unknown_versions_and_bad_keys_are_refused() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[3, 0]).is_err());
        let mut out = Vec::new();
        encode(&Event::sample("click", "u"), &mut out);
        out[1] |= HAS_EXPERIMENT;
        out.splice(3..3, [2, b'U', b'p']);
        let err = decode(&out).unwrap_err();
        assert!(err.contains("invalid experiment key"), "{err}");
    }

    #[test]
    fn a_typical_event_fits_in_sixty_bytes() {
        let at = 1_767_225_600_000; // 2026-01-01
        let id = Builder::from_unix_timestamp_millis(at, &[0x5a; 10]).into_uuid();
        let e = Event {
            seq: 5_000_000,
            event_id: id.to_string().into(),
            experiment: Some(ExperimentKey::try_from("checkout").unwrap()),
            variant: Some(VariantKey::try_from("treatment").unwrap()),
            value: Some(12.5),
            timestamp_ms: at as i64,
            received_ms: at as i64,
            ..Event::sample("conversion", "u123456")
        };
        let mut binary = Vec::new();
        encode(&e, &mut binary);
        let mut json = vec![VALUE_V1];
        serde_json::to_writer(&mut json, &EventRecordRef::from(&e)).unwrap();
        eprintln!(
            "typical event: {} bytes binary, {} bytes JSON",
            binary.len(),
            json.len()
        );
        assert_eq!(decode(&binary).unwrap(), e);
        assert!(binary.len() < 60, "{} bytes", binary.len());
    }
}
