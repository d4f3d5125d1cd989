//! The event pipeline over HTTP: validation, de-duplication, exposures,
//! `ack=persisted` and sinks. Durability across restarts and crashes is in
//! `durability.rs`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{error_code, TestServer};

#[test]
fn single_and_batched_events_are_accepted_and_stored() {
    let server = TestServer::start_with(&[("ABACUS_INGEST__MAX_EVENT_AGE_S", "315360000")]);
    let (status, body) = server.post(
        "/v1/events",
        json!({"type": "click", "unit_id": "u1", "properties": {"item_id": "sku-1", "rank": 2}}),
    );
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(1)),
        "{body}"
    );
    let (status, body) = server.post(
        "/v1/events?ack=persisted",
        json!({"events": [
            {"type": "impression", "unit_id": "u1", "properties": {"query": "shoes", "results_count": 20}},
            {"type": "engagement", "unit_id": "u1", "properties": {"item_id": "sku-1", "dwell_time_ms": 1500}},
            {"type": "metric", "unit_id": "u2", "value": 3.5, "properties": {"name": "revenue"}},
            {"type": "signup", "unit_id": "u3", "timestamp": "2026-01-01T00:00:00Z"}
        ]}),
    );
    assert_eq!(
        (
            status,
            body["accepted"].as_u64(),
            body["persisted"].as_bool()
        ),
        (202, Some(4), Some(true))
    );
    let events = server.stored(None);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["signup", "click", "impression", "engagement", "metric"],
        "ordered by time"
    );
    assert_eq!(events[0]["timestamp_ms"], 1_767_225_600_000_i64);
    let seqs: Vec<u64> = events[1..]
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[test]
fn a_bad_batch_is_rejected_whole_naming_index_and_field() {
    let server = TestServer::start();
    server.running_experiment("exp", json!({}));
    let cases = [
        (
            json!({"type": "click", "unit_id": "u", "properties": {"item_id": "a", "rank": -1}}),
            "events[1].properties.rank",
        ),
        (
            json!({"type": "engagement", "unit_id": "u", "properties": {"item_id": "a", "dwell_time_ms": -3}}),
            "events[1].properties.dwell_time_ms",
        ),
        (
            json!({"type": "metric", "unit_id": "u", "properties": {"name": "m", "value": "x"}}),
            "events[1].properties.value",
        ),
        (
            json!({"type": "click", "unit_id": "u", "experiment": "nope", "properties": {"item_id": "a"}}),
            "events[1].experiment",
        ),
        (
            json!({"type": "conversion", "unit_id": "u", "experiment": "exp", "variant": "purple"}),
            "events[1].variant",
        ),
        (
            json!({"type": "conversion", "unit_id": "", "experiment": "exp"}),
            "events[1].unit_id",
        ),
        (
            json!({"type": "conversion", "unit_id": "u", "value": "NaN"}),
            "events[1].value",
        ),
        (
            json!({"type": "conversion", "unit_id": "u", "timestamp": "yesterday"}),
            "events[1].timestamp",
        ),
    ];
    for (bad, field) in cases {
        let good = json!({"type": "conversion", "unit_id": "ok"});
        let (status, err) = server.post("/v1/events", json!({"events": [good, bad]}));
        assert!(status == 422, "{status} {err}");
        assert!(["validation_failed", "invalid_body"].contains(&error_code(&err)));
        assert_eq!(err["error"]["field"], field, "{err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains('1'),
            "{err}"
        );
    }
    server.barrier();
    let stored = server.stored(None);
    assert!(
        stored.iter().all(|e| e["unit_id"] == "barrier"),
        "nothing from a rejected batch: {stored:?}"
    );

    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"type": "x", "unit_id": format!("u{i}")}))
        .collect();
    let (status, err) = server.post("/v1/events", json!({"events": too_many}));
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("events"))
    );
}

#[test]
fn the_same_event_id_is_stored_once() {
    let server = TestServer::start();
    let event =
        |id: &str| json!({"event_id": id, "type": "conversion", "unit_id": "u", "value": 1});
    server.post(
        "/v1/events",
        json!({"events": [event("a"), event("a"), event("b")]}),
    );
    server.post("/v1/events", event("a"));
    server.post("/v1/events", json!({"events": [event("b"), event("c")]}));
    server.barrier();
    let mut ids: Vec<String> = server
        .stored(None)
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .filter(|id| id.len() == 1)
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);
}

#[test]
fn assignments_log_exposures_and_events_get_their_variant() {
    let server = TestServer::start();
    server.running_experiment("exp", json!({}));
    let assigned = server.assign("exp", "alice");
    let variant = assigned["variant"].as_str().unwrap().to_owned();
    server.assign("exp", "alice");
    let other = if variant == "control" {
        "treatment"
    } else {
        "control"
    };
    server.post(
        "/v1/events",
        json!({"events": [
            {"type": "conversion", "unit_id": "alice", "experiment": "exp"},
            {"type": "conversion", "unit_id": "alice", "experiment": "exp", "variant": other}
        ]}),
    );
    // Client-side assignment: an exposure event establishes stickiness,
    // here to the variant abacus would not have given bob.
    let (_, peek) = server.get("/v1/experiments/exp/assignment?unit_id=bob&log_exposure=false");
    let bob_reported = if peek["variant"] == "control" {
        "treatment"
    } else {
        "control"
    };
    server.post(
        "/v1/events",
        json!({"type": "exposure", "unit_id": "bob", "experiment": "exp", "variant": bob_reported}),
    );
    server.barrier();

    let events = server.stored(Some("exp"));
    let exposures: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "exposure" && e["unit_id"] == "alice")
        .collect();
    assert_eq!(
        exposures.len(),
        2,
        "every in-experiment assignment logs an exposure"
    );
    assert!(exposures.iter().all(|e| e["variant"] == variant.as_str()));
    let conversions: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "conversion")
        .collect();
    assert_eq!(
        conversions[0]["variant"],
        variant.as_str(),
        "derived from the assignment"
    );
    assert_eq!(conversions[0].get("assignment_mismatch"), None);
    assert_eq!(
        conversions[1]["variant"], other,
        "the explicit variant counts"
    );
    assert_eq!(conversions[1]["assignment_mismatch"], true);

    let bob = server.assign("exp", "bob");
    assert_eq!(
        (bob["variant"].as_str(), bob["reason"].as_str()),
        (Some(bob_reported), Some("sticky"))
    );

    // An exposure to a draft is refused, and with it the whole batch: the
    // exposure after it makes nobody sticky.
    server.post(
        "/v1/experiments",
        json!({
            "key": "draft", "name": "d",
            "variants": [{"key": "control", "weight": 1}, {"key": "b", "weight": 1}]
        }),
    );
    let batch = |events: Value| server.post("/v1/events", json!({ "events": events }));
    let (_, peek) = server.get("/v1/experiments/exp/assignment?unit_id=erin&log_exposure=false");
    let erin_reported = if peek["variant"] == "control" {
        "treatment"
    } else {
        "control"
    };
    let (status, body) = batch(json!([
        {"type": "exposure", "unit_id": "dave", "experiment": "draft"},
        {"type": "exposure", "unit_id": "erin", "experiment": "exp", "variant": erin_reported}
    ]));
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("events[0].experiment")),
        "{body}"
    );
    let (_, peek) = server.get("/v1/experiments/exp/assignment?unit_id=erin&log_exposure=false");
    assert_eq!(
        peek["reason"], "hashed",
        "the refused batch made erin sticky: {peek}"
    );
    let (status, body) = batch(json!([
        {"type": "exposure", "unit_id": "erin", "experiment": "exp", "variant": erin_reported}
    ]));
    assert_eq!(status, 202, "{body}");
    let erin = server.assign("exp", "erin");
    assert_eq!(
        (erin["variant"].as_str(), erin["reason"].as_str()),
        (Some(erin_reported), Some("sticky"))
    );
    assert_eq!(server.assign("exp", "dave")["reason"], "hashed");

    let (_, quiet) = server.get("/v1/experiments/exp/assignment?unit_id=carol&log_exposure=false");
    assert_eq!(quiet["in_experiment"], true);
    server.barrier();
    assert!(server
        .stored(Some("exp"))
        .iter()
        .all(|e| e["unit_id"] != "carol"));
}

#[test]
fn the_jsonl_sink_receives_every_committed_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut server = TestServer::start_with(&[
        ("ABACUS_INGEST__SINKS", "[\"rocksdb\", \"jsonl\"]"),
        ("ABACUS_INGEST__JSONL_PATH", path.to_str().unwrap()),
    ]);
    let batch: Vec<Value> = (0..250)
        .map(|i| json!({"type": "view", "unit_id": format!("u{i}")}))
        .collect();
    for _ in 0..4 {
        assert_eq!(server.post("/v1/events", json!({"events": batch})).0, 202);
    }
    assert!(server.stop().success());
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1000);
    assert!(lines.iter().all(|e| e["type"] == "view"));
}

/// Clients that together send faster than the writers commit: with
/// `ingest.enqueue_wait_ms` each request that finds the (one-request)
/// mailbox full waits for room and is accepted, and every event is
/// stored; without it the same load is refused in part, with
/// `503 overloaded` and `Retry-After`.
#[test]
fn a_full_mailbox_slows_clients_for_enqueue_wait_ms_before_refusing_them() {
    // One writer whose mailbox holds a single request.
    let tiny = |wait_ms| {
        TestServer::start_with(&[
            ("ABACUS_INGEST__PARTITIONS", "1"),
            ("ABACUS_INGEST__MAILBOX_CAPACITY", "1"),
            ("ABACUS_INGEST__MAX_BATCH", "256"),
            ("ABACUS_INGEST__MAILBOX_EVENTS", "256"),
            ("ABACUS_INGEST__ENQUEUE_WAIT_MS", wait_ms),
        ])
    };

    let waiting = tiny("10000");
    let answers = flood(&waiting);
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status != 202).collect();
    assert!(
        refused.is_empty(),
        "{} refused: {:?}",
        refused.len(),
        refused[0]
    );
    waiting.barrier();
    assert_eq!(waiting.stored(None).len(), answers.len() * FLOOD_BATCH);
    assert_eq!(rejected_for_a_full_mailbox(&waiting), 0);

    let refusing = tiny("0");
    let answers = flood(&refusing);
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status != 202).collect();
    assert!(!refused.is_empty(), "a one-request mailbox never filled");
    for answer in &refused {
        assert_eq!(
            (
                answer.status,
                error_code(&answer.body),
                answer.retry_after.as_deref()
            ),
            (503, "overloaded", Some("1")),
            "{}",
            answer.body
        );
    }
    assert_eq!(
        rejected_for_a_full_mailbox(&refusing),
        refused.len() * FLOOD_BATCH
    );
    // The mailbox may still hold the last accepted request, and this
    // server does not wait: the barrier itself is retried until taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    while refusing
        .post(
            "/v1/events?ack=persisted",
            json!({"type": "barrier", "unit_id": "barrier"}),
        )
        .0
        == 503
    {
        assert!(Instant::now() < deadline, "the mailbox never drained");
        std::thread::sleep(Duration::from_millis(10));
    }
    let accepted = answers.len() - refused.len();
    assert_eq!(
        refusing.stored(None).len(),
        accepted * FLOOD_BATCH,
        "all or none per request"
    );
}

/// Events per request of [`flood`].
const FLOOD_BATCH: usize = 100;

/// One answer of [`flood`].
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

/// Eight clients at once, each posting 25 batches of [`FLOOD_BATCH`]
/// conversions of distinct units, as fast as they are answered.
fn flood(server: &TestServer) -> Vec<Answer> {
    let post = |client: usize, batch: usize| {
        let events: Vec<Value> = (0..FLOOD_BATCH)
            .map(|e| json!({"type": "conversion", "unit_id": format!("u-{client}-{batch}-{e}")}))
            .collect();
        let response = server
            .request(reqwest::Method::POST, "/v1/events")
            .json(&json!({ "events": events }))
            .send()
            .expect("request");
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (status, body) = crate::common::read(response);
        Answer {
            status,
            body,
            retry_after,
        }
    };
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8)
            .map(|c| scope.spawn(move || (0..25).map(|b| post(c, b)).collect::<Vec<_>>()))
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("a client thread"))
            .collect()
    })
}

/// `abacus_events_rejected_total{reason="mailbox_full"}`.
fn rejected_for_a_full_mailbox(server: &TestServer) -> usize {
    let text = server
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(r#"abacus_events_rejected_total{reason="mailbox_full"} "#))
        .map_or(0, |v| v.parse().expect("a count"))
}
