//! What one message on the event log carries: one partition's part of a
//! request — its events and the first exposures they establish.
//!
//! ```text
//! [version 1] [event count: u32 LE]
//!   per event: [client id? u8] [length: u32 LE] [the stored event encoding]
//! [first exposures: JSON array]
//! ```
//!
//! Events use the store's binary encoding (under 60 bytes for a typical
//! one), so the log costs about what the store does; whether the id came
//! from the client, which the store drops, travels beside it because the
//! partition's owner de-duplicates by it. First exposures are rare (one per
//! unit and experiment), so JSON is cheap enough for them.

use crate::domain::{Event, StickyAssignment};
use crate::storage::event_codec;

const VERSION: u8 = 1;

/// One partition's events and first exposures, as the log carries them.
#[derive(Debug, Default, PartialEq)]
pub struct Part {
    /// Validated, stamped events (not numbered: the owner numbers them).
    pub events: Vec<Event>,
    /// First exposures they may establish.
    pub sticky: Vec<StickyAssignment>,
}

/// The message body of `events` and `sticky`.
pub fn encode(events: &[Event], sticky: &[StickyAssignment]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + events.len() * 96);
    out.push(VERSION);
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    let mut value = Vec::with_capacity(128);
    for event in events {
        value.clear();
        event_codec::encode(event, &mut value);
        out.push(u8::from(event.client_id));
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(&value);
    }
    // A Vec of plain records always serialises.
    if serde_json::to_writer(&mut out, sticky).is_err() {
        out.extend_from_slice(b"[]");
    }
    out
}

/// Reads a message body; never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Part, String> {
    let mut rest = match bytes.split_first() {
        Some((&VERSION, rest)) => rest,
        Some((v, _)) => return Err(format!("unknown event log message version {v}")),
        None => return Err("an empty event log message".to_owned()),
    };
    let count = take_u32(&mut rest)?;
    let mut events = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let (&client_id, tail) = rest.split_first().ok_or("a truncated event")?;
        rest = tail;
        let len = take_u32(&mut rest)? as usize;
        if rest.len() < len {
            return Err("a truncated event".to_owned());
        }
        let (value, tail) = rest.split_at(len);
        rest = tail;
        let mut event = event_codec::decode(value)?;
        event.client_id = client_id != 0;
        events.push(event);
    }
    let sticky = serde_json::from_slice(rest).map_err(|e| format!("first exposures: {e}"))?;
    Ok(Part { events, sticky })
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, String> {
    let (head, tail) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| "a truncated length".to_owned())?;
    *rest = tail;
    Ok(u32::from_le_bytes(*head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_survives_the_log_with_its_client_ids_and_first_exposures() {
        let events = vec![
            Event {
                client_id: true,
                value: Some(12.5),
                timestamp_ms: 1_700_000_000_000,
                received_ms: 1_700_000_000_000,
                ..Event::sample("conversion", "u1")
            },
            Event::sample("exposure", "u2"),
        ];
        let sticky = vec![StickyAssignment {
            experiment: "checkout".try_into().expect("a key"),
            unit: "u2".into(),
            variant: "b".into(),
            first_exposed_ms: 7,
            diverges: false,
        }];
        let back = decode(&encode(&events, &sticky)).expect("decodes");
        assert_eq!(back.events, events);
        assert!(back.events[0].client_id && !back.events[1].client_id);
        assert_eq!(back.sticky, sticky);
    }

    #[test]
    fn foreign_or_truncated_bytes_are_errors_not_panics() {
        let whole = encode(&[Event::sample("click", "u")], &[]);
        for cut in 0..whole.len() {
            assert!(decode(&whole[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(&[9, 0, 0, 0, 0]).is_err());
        assert!(decode(&[VERSION, 255, 255, 255, 255]).is_err());
    }
}
