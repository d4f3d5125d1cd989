//! Retention is counted from arrival: an event stays at least
//! `storage.retention_days` after abacus received it, however old its own
//! timestamp; the sweep deletes by timestamp only past `retention +
//! ingest.max_event_age_s`, and aggregates keep what it removed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::TestServer;

fn ago(days: i64) -> String {
    (time::OffsetDateTime::now_utc() - time::Duration::days(days))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[test]
fn an_acknowledged_event_is_not_swept_before_its_time_however_old_its_timestamp() {
    let server = TestServer::start_with(&[
        ("ABACUS_STORAGE__RETENTION_DAYS", "2"),
        ("ABACUS_STORAGE__RETENTION_SWEEP_INTERVAL_S", "1"),
        ("RUST_LOG", "info,abacus_actors::ingest::retention=debug"),
    ]);
    server.persist(json!({"events": [
        {"type": "signup", "unit_id": "late", "timestamp": ago(5)},
        {"type": "signup", "unit_id": "later", "timestamp": ago(3)}
    ]}));
    // Let two sweeps run after the write.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.log().matches("retention sweep done").count() < 3 {
        assert!(Instant::now() < deadline, "no sweep ran:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.stored(None).len(), 2, "received just now: kept");
}

#[test]
fn events_past_retention_are_swept_and_aggregates_kept() {
    // Written while retention was off and old timestamps were accepted...
    let mut server = TestServer::start_with(&[
        ("ABACUS_STORAGE__RETENTION_DAYS", "0"),
        ("ABACUS_INGEST__MAX_EVENT_AGE_S", "864000"),
    ]);
    server.running_experiment("exp", json!({}));
    let (status, body) = server.post(
        "/v1/events?ack=persisted",
        json!({"events": [
            {"type": "exposure", "unit_id": "old", "experiment": "exp", "variant": "control", "timestamp": ago(5)},
            {"type": "signup", "unit_id": "old", "timestamp": ago(4)},
            {"type": "signup", "unit_id": "old", "experiment": "exp", "timestamp": ago(3)},
            {"type": "exposure", "unit_id": "new", "experiment": "exp", "variant": "control", "timestamp": ago(0)},
            {"type": "signup", "unit_id": "new", "timestamp": ago(0)}
        ]}),
    );
    assert_eq!(status, 202, "{body}");
    let before = server.aggregates("exp");
    assert_eq!(before["variants"]["control"]["units"], 2);

    // ...then kept for one day with timestamps at most an hour old: the
    // cutoff is 25 hours ago, past the three old events.
    server.set_env("ABACUS_STORAGE__RETENTION_DAYS", "1");
    server.set_env("ABACUS_STORAGE__RETENTION_SWEEP_INTERVAL_S", "1");
    server.set_env("ABACUS_INGEST__MAX_EVENT_AGE_S", "3600");
    server.restart();
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
