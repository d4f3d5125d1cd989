//! Per-experiment aggregates over HTTP: exposed units counted once, the
//! SPEC's attribution rules, de-duplication, and live numbers equal to a
//! rebuild from stored events before and after a restart.

use serde_json::{json, Value};

use crate::common::TestServer;

const T0: &str = "2026-11-01T12:00:00Z";

fn at(minutes: i64) -> String {
    let t = time::OffsetDateTime::parse(T0, &time::format_description::well_known::Rfc3339)
        .unwrap()
        + time::Duration::minutes(minutes);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn measure<'a>(a: &'a Value, variant: &str, m: &str) -> &'a Value {
    &a["variants"][variant]["measures"][m]
}

#[test]
fn aggregates_follow_the_attribution_rules_and_survive_a_restart() {
    let mut server = TestServer::start_with(&[("ABACUS_INGEST__MAX_EVENT_AGE_S", "315360000")]);
    server.running_experiment(
        "exp",
        json!({"metrics": [{"key": "purchase", "kind": "mean"}, {"key": "click", "kind": "binomial"}]}),
    );
    let alice = server.assign("exp", "alice")["variant"]
        .as_str()
        .unwrap()
        .to_owned();
    server.assign("exp", "alice");
    server.assign("exp", "alice");
    let other = if alice == "control" {
        "treatment"
    } else {
        "control"
    };
    let purchase = |id: Option<&str>, minutes: i64, value: f64| {
        let mut e =
            json!({"type": "purchase", "unit_id": "bob", "value": value, "timestamp": at(minutes)});
        if let Some(id) = id {
            e["event_id"] = json!(id);
        }
        e
    };
    let events = json!({"events": [
        {"type": "exposure", "unit_id": "bob", "experiment": "exp", "variant": "treatment", "timestamp": at(0)},
        purchase(None, -60, 10.0),
        purchase(Some("p1"), 1, 5.0),
        purchase(Some("p1"), 1, 5.0),
        {"type": "metric", "unit_id": "bob", "experiment": "exp", "timestamp": at(3),
         "properties": {"name": "purchase", "value": 3}},
        {"type": "click", "unit_id": "carol", "properties": {"item_id": "x"}},
        {"type": "click", "unit_id": "alice", "experiment": "exp", "properties": {"item_id": "x"}},
        {"type": "click", "unit_id": "alice", "properties": {"item_id": "y"}},
        {"type": "click", "unit_id": "alice", "experiment": "exp", "variant": other, "properties": {"item_id": "z"}}
    ]});
    assert_eq!(server.post("/v1/events", events).0, 202);
    assert_eq!(
        server.post("/v1/events", purchase(Some("p1"), 1, 5.0)).0,
        202
    );
    assert_eq!(server.post("/v1/events", purchase(None, 2, 7.0)).0, 202);
    server.barrier();

    let a = server.aggregates("exp");
    assert_eq!(a["variants"][&alice]["units"], 1, "{a}");
    assert_eq!(a["variants"][&alice]["exposures"], 3);
    let clicks = measure(&a, &alice, "click");
    assert_eq!(
        (&clicks["units"], &clicks["events"]),
        (&json!(1), &json!(2))
    );
    assert_eq!(a["variants"][other]["assignment_mismatches"], 1);
    assert!(
        measure(&a, other, "click").is_null(),
        "alice was never exposed to {other}"
    );
    let bought = measure(&a, "treatment", "purchase");
    assert_eq!(
        bought,
        &json!({"units": 1, "events": 3, "sum": 15.0, "sum_squares": 225.0}),
        "before-exposure purchase excluded, duplicate counted once: {a}"
    );
    let treatment_units = if alice == "treatment" { 2 } else { 1 };
    assert_eq!(a["variants"]["treatment"]["units"], treatment_units);

    server.restart();
    assert_eq!(
        server.aggregates("exp"),
        a,
        "the same numbers after a restart"
    );
    assert_eq!(server.post("/v1/events", purchase(None, 4, 1.0)).0, 202);
    server.barrier();
    let after = server.aggregates("exp");
    assert_eq!(
        measure(&after, "treatment", "purchase"),
        &json!({"units": 1, "events": 4, "sum": 16.0, "sum_squares": 256.0}),
        "bob's running sum survived the restart"
    );
}

#[test]
fn aggregates_of_an_unknown_experiment_are_404_and_bad_sources_400() {
    let server = TestServer::start();
    let (status, body) = server.get("/v1/experiments/nope/aggregates");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("experiment_not_found"))
    );
    server.running_experiment("exp", json!({}));
    let (status, body) = server.get("/v1/experiments/exp/aggregates?source=guess");
    assert_eq!(status, 400, "{body}");
    assert_eq!(server.aggregates("exp"), json!({"variants": {}}));
}
