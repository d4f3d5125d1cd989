//! Retention: raw events older than `storage.retention_days` disappear
//! from the store while newer ones and the aggregates stay.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::TestServer;

#[test]
fn events_older_than_the_retention_are_swept_and_aggregates_kept() {
    let server = TestServer::start_with(&[
        ("ABACUS_STORAGE__RETENTION_DAYS", "2"),
        ("ABACUS_STORAGE__RETENTION_SWEEP_INTERVAL_S", "1"),
    ]);
    server.running_experiment("exp", json!({}));
    let ago = |days: i64| {
        (time::OffsetDateTime::now_utc() - time::Duration::days(days))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let (status, body) = server.post(
        "/v1/events?ack=persisted",
        json!({"events": [
            {"type": "exposure", "unit_id": "old", "experiment": "exp", "variant": "control", "timestamp": ago(5)},
            {"type": "signup", "unit_id": "old", "timestamp": ago(4)},
            {"type": "signup", "unit_id": "old", "experiment": "exp", "timestamp": ago(3)},
            {"type": "exposure", "unit_id": "new", "experiment": "exp", "variant": "control", "timestamp": ago(1)},
            {"type": "signup", "unit_id": "new", "timestamp": ago(0)}
        ]}),
    );
    assert_eq!(status, 202, "{body}");
    // Not `server.aggregates`: a sweep may already have run.
    let (_, before) = server.get("/v1/experiments/exp/aggregates");
    assert_eq!(before["variants"]["control"]["units"], 2);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = server.stored(None).len() + server.stored(Some("exp")).len();
        if left == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} events left");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server
        .stored(None)
        .iter()
        .chain(&server.stored(Some("exp")))
        .all(|e| e["unit_id"] == "new"));
    let (_, live) = server.get("/v1/experiments/exp/aggregates");
    assert_eq!(live, before, "aggregates keep what retention removed");
    let (_, rebuilt) = server.get("/v1/experiments/exp/aggregates?source=events");
    assert_eq!(rebuilt["variants"]["control"]["units"], 1);
}
