//! `/v1/events`: ingestion (fire-and-forget, or `ack=persisted`) and export.

use abacus_actors::ingest::Intake;
use abacus_actors::quotas::Quotas;
use std::time::Duration;

use abacus_actors::domain::{unix_ms, Event, EventIn, ExperimentKey};
use actix_web::{get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Ingest, Viewer};
use super::error::{ApiError, ApiResult};
use super::extract::{self, parse, JsonBytes};
use super::scoped::Scoped;
use super::Limits;
use abacus_actors::Error as EngineError;

/// Longest an `ack=persisted` request waits for its group commit.
const PERSIST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_EXPORT_PAGE: usize = 10_000;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(accept).service(export);
}

/// When `POST /v1/events` answers.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// As soon as the events are validated and queued (default).
    #[default]
    Accepted,
    /// Once they are committed to RocksDB.
    Persisted,
}

/// Query of `POST /v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IngestQuery {
    /// `accepted` (default) or `persisted`.
    #[serde(default)]
    ack: AckMode,
}

/// Body of `POST /v1/events`: one event, or `{"events": [...]}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[schema(as = EventsIn)]
#[allow(dead_code)] // documents the body's shape; parsing goes through `split`
pub enum EventsIn {
    // One event. Not a doc comment: as a description beside the `$ref`
    // it makes generators (schemathesis) take any value for this variant.
    #[allow(missing_docs)]
    One(EventIn),
    /// Up to `ingest.max_batch` events, accepted or rejected whole.
    Many {
        /// The events.
        events: Vec<EventIn>,
    },
}

/// Answer of `POST /v1/events`.
#[derive(Serialize, ToSchema)]
pub struct AcceptedOut {
    /// Events accepted (duplicates of earlier ids included; they are
    /// stored once).
    accepted: usize,
    /// `true` when `ack=persisted` and the events are committed.
    persisted: bool,
}

/// Send one event or a batch.
#[utoipa::path(
    tag = "events",
    params(IngestQuery),
    request_body = EventsIn,
    responses(
        (status = 202, description = "Queued (or committed, with ack=persisted)", body = AcceptedOut),
        (status = 400, description = "Malformed JSON"),
        (status = 422, description = "An event is invalid; nothing was stored"),
        (status = 503, description = "Mailbox full; retry after Retry-After seconds"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/events")]
async fn accept(
    _: Ingest,
    intake: Scoped<Intake>,
    quotas: Scoped<Quotas>,
    limits: web::Data<Limits>,
    query: web::Query<IngestQuery>,
    JsonBytes(body): JsonBytes,
) -> ApiResult<HttpResponse> {
    let count_invalid = |e: &ApiError, offered: usize| {
        if e.is_invalid_input() {
            intake.count_invalid(offered as u64);
        }
    };
    let (inputs, batch) = match decode(&body, limits.max_batch) {
        Some(decoded) => decoded,
        None => {
            let body: Value = parse(&body)?;
            let offered = match &body {
                Value::Object(map) => map
                    .get("events")
                    .and_then(Value::as_array)
                    .map_or(1, Vec::len),
                _ => 1,
            };
            split(body, limits.max_batch).inspect_err(|e| count_invalid(e, offered))?
        }
    };
    let offered = inputs.len();
    quotas.admit_events(offered)?;
    let accepted = intake
        .accept(inputs, query.ack == AckMode::Persisted)
        .await
        .map_err(|e| in_request(e, batch))
        .inspect_err(|e| count_invalid(e, offered))?;
    let persisted = match accepted.persisted {
        Some(rx) => match tokio::time::timeout(PERSIST_TIMEOUT, rx).await {
            Ok(Ok(true)) => true,
            _ => return Err(EngineError::Unavailable.into()),
        },
        None => false,
    };
    Ok(HttpResponse::Accepted().json(AcceptedOut {
        accepted: accepted.count,
        persisted,
    }))
}

/// Decodes a well-formed body straight into its events, and whether it was
/// a batch, without the generic JSON tree and path tracking that naming a
/// refused field needs (together most of an ingest handler's time). `None`
/// for anything else, which [`split`] then decodes, and refuses with the
/// field's path, as before.
fn decode(body: &[u8], max_batch: usize) -> Option<(Vec<EventIn>, bool)> {
    #[derive(Deserialize)]
    #[serde(remote = "Self", deny_unknown_fields)]
    struct Batch {
        events: Vec<EventIn>,
    }
    // Not from an array of its fields, as an `EventIn` is not either.
    abacus_actors::objects_only!(Batch);
    match serde_json::from_slice::<Batch>(body) {
        Ok(Batch { events }) => (1..=max_batch)
            .contains(&events.len())
            .then_some((events, true)),
        Err(_) => serde_json::from_slice(body).ok().map(|e| (vec![e], false)),
    }
}

/// Splits a body into events, with each decoding error's field prefixed by
/// its index in a batch. Returns whether the body was a batch.
fn split(body: Value, max_batch: usize) -> ApiResult<(Vec<EventIn>, bool)> {
    let decode = |value: Value, prefix: &str| {
        serde_path_to_error::deserialize::<_, EventIn>(value).map_err(|e| {
            let path = e.path().to_string();
            let field = match (prefix.is_empty(), path.as_str()) {
                (true, ".") => None,
                (true, _) => Some(path),
                (false, ".") => Some(prefix.to_owned()),
                (false, _) => Some(format!("{prefix}.{path}")),
            };
            ApiError::InvalidBody {
                message: match prefix {
                    "" => e.into_inner().to_string(),
                    _ => format!("{prefix}: {}", e.into_inner()),
                },
                field,
            }
        })
    };
    match body {
        Value::Object(mut map) if map.contains_key("events") => {
            let Some(Value::Array(events)) = map.remove("events") else {
                return Err(invalid_batch("events must be an array"));
            };
            if let Some(extra) = map.keys().next() {
                return Err(invalid_batch(&format!(
                    "unknown field `{extra}` next to `events`"
                )));
            }
            if events.is_empty() || events.len() > max_batch {
                return Err(invalid_batch(&format!(
                    "a batch holds 1 to {max_batch} events, got {}",
                    events.len()
                )));
            }
            let inputs = events
                .into_iter()
                .enumerate()
                .map(|(i, v)| decode(v, &format!("events[{i}]")))
                .collect::<ApiResult<_>>()?;
            Ok((inputs, true))
        }
        single => Ok((vec![decode(single, "")?], false)),
    }
}

/// An event's refusal as the client sees it: in a batch, the field path
/// and the message name the event (`events[3].value`, `event 3: …`).
fn in_request(error: EngineError, batch: bool) -> ApiError {
    match error {
        EngineError::InvalidEvent {
            index,
            field,
            message,
        } if batch => EngineError::Invalid {
            field: format!("events[{index}].{field}"),
            message: format!("event {index}: {message}"),
        },
        EngineError::InvalidEvent { field, message, .. } => EngineError::Invalid { field, message },
        other => other,
    }
    .into()
}

fn invalid_batch(message: &str) -> ApiError {
    ApiError::InvalidBody {
        field: Some("events".into()),
        message: message.to_owned(),
    }
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Events of this experiment; without it, events not tied to any experiment.
    experiment: Option<ExperimentKey>,
    /// Inclusive start (RFC 3339); default the beginning.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<OffsetDateTime>,
    /// Exclusive end (RFC 3339); default the end of time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<OffsetDateTime>,
    /// Page size, 1..=10000 (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^([0-9a-fA-F]{2})*$")]
    cursor: Option<String>,
}

/// A page of stored events.
#[derive(Serialize, ToSchema)]
pub struct EventPageOut {
    /// Events by time, then commit order (`seq`); times in ms since the epoch.
    #[schema(value_type = Vec<Object>)]
    events: Vec<Event>,
    /// Cursor of the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// Export stored events by experiment and time range, a page at a time.
#[utoipa::path(
    tag = "events",
    params(ExportQuery),
    responses((status = 200, description = "A page of events", body = EventPageOut)),
    security(("bearer" = []))
)]
#[get("/v1/events")]
async fn export(
    _: Viewer,
    intake: Scoped<Intake>,
    query: web::Query<ExportQuery>,
) -> ApiResult<HttpResponse> {
    let query = query.into_inner();
    let limit = extract::page_limit(query.limit, 1000, MAX_EXPORT_PAGE)?;
    let cursor = query
        .cursor
        .as_deref()
        .map(|c| {
            decode_hex(c).ok_or_else(|| ApiError::bad_query("cursor", "not a cursor from this API"))
        })
        .transpose()?;
    let from = query.from.map_or(0, unix_ms);
    let to = query.to.map_or(i64::MAX, unix_ms);
    let page = intake
        .events(query.experiment, from, to, cursor, limit)
        .await?;
    Ok(HttpResponse::Ok().json(EventPageOut {
        events: page.events,
        next_cursor: page.next.map(|k| encode_hex(&k)),
    }))
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex digits in pairs, and nothing else (`from_str_radix` alone would
/// also take a sign).
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cursors_are_hex_pairs_only() {
        assert_eq!(decode_hex("0aFf"), Some(vec![0x0a, 0xff]));
        for bad in ["+a", "-1", "0", "zz", " a"] {
            assert_eq!(decode_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_array_is_no_event_and_no_batch_item() {
        assert!(matches!(
            split(json!({"events": [["id", "click", "u"]]}), 10),
            Err(ApiError::InvalidBody { .. })
        ));
        assert!(matches!(
            split(json!([null, "click", "u"]), 10),
            Err(ApiError::InvalidBody { .. })
        ));
        let event = r#"{"type": "click", "unit_id": "u", "properties": {"item_id": "a"}}"#;
        assert!(decode(format!("[[{event}]]").as_bytes(), 10).is_none());
        assert!(decode(format!(r#"{{"events": [{event}]}}"#).as_bytes(), 10).is_some());
    }

    #[test]
    fn batches_name_the_failing_index_and_field() {
        let body = json!({"events": [
            {"type": "click", "unit_id": "u", "properties": {"item_id": "a"}},
            {"type": "click", "unit_id": 7}
        ]});
        match split(body, 10) {
            Err(ApiError::InvalidBody { field, message }) => {
                assert_eq!(field.as_deref(), Some("events[1].unit_id"));
                assert!(message.starts_with("events[1]"), "{message}");
            }
            other => panic!("{:?}", other.map(|(v, b)| (v.len(), b))),
        }
    }

    #[test]
    fn batch_size_is_bounded() {
        let event = json!({"type": "x", "unit_id": "u"});
        assert!(split(json!({"events": [event.clone(), event.clone()]}), 2).is_ok());
        assert!(split(json!({"events": [event.clone(), event.clone(), event]}), 2).is_err());
        assert!(split(json!({"events": []}), 2).is_err());
        assert!(split(json!({"events": {}}), 2).is_err());
    }

    #[test]
    fn the_fast_decoding_takes_what_split_takes_and_nothing_else() {
        let event =
            r#"{"type": "click", "unit_id": "u", "value": 2, "properties": {"item_id": "a"}}"#;
        let taken = [
            event.to_owned(),
            format!(r#"{{"events": [{event}, {event}]}}"#),
            r#"{"type": "x", "unit_id": "u", "timestamp": "2026-01-01T00:00:00Z"}"#.to_owned(),
        ];
        let left_to_split = [
            format!(r#"{{"events": [{event}, {event}, {event}]}}"#), // past the bound
            r#"{"events": []}"#.to_owned(),
            format!(r#"{{"events": [{event}], "extra": 1}}"#),
            r#"{"events": [], "type": "x", "unit_id": "u"}"#.to_owned(),
            r#"{"type": "x", "type": "y", "unit_id": "u"}"#.to_owned(), // duplicate key
            r#"{"type": "x", "unit_id": 7}"#.to_owned(),
            r#"[1, 2]"#.to_owned(),
            r#"{"type": "x", "unit_id": "u"} trailing"#.to_owned(),
        ];
        let slow = |body: &str| parse::<Value>(body.as_bytes()).and_then(|v| split(v, 2));
        // Properties are kept as sent by one path and re-serialised by the
        // other: they agree as JSON.
        let same = |(events, batch): (Vec<EventIn>, bool)| {
            let properties: Vec<Option<Value>> = events
                .iter()
                .map(|e| {
                    e.properties
                        .as_ref()
                        .map(|p| serde_json::from_str(p.get()).unwrap())
                })
                .collect();
            let rest: Vec<EventIn> = events
                .into_iter()
                .map(|e| EventIn {
                    properties: None,
                    ..e
                })
                .collect();
            format!("{rest:?} {properties:?} {batch}")
        };
        for body in &taken {
            let fast = decode(body.as_bytes(), 2).expect(body);
            let slow = slow(body).expect(body);
            assert_eq!(same(fast), same(slow), "{body}");
        }
        for body in &left_to_split {
            assert!(decode(body.as_bytes(), 2).is_none(), "{body}");
        }
    }

    #[test]
    fn cursors_round_trip() {
        let key = vec![0u8, 1, 254, 255];
        assert_eq!(decode_hex(&encode_hex(&key)), Some(key));
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("abc"), None);
    }
}
