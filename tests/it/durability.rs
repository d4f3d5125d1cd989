//! Nothing acknowledged is lost: SIGTERM drains everything answered 202;
//! SIGKILL loses nothing answered `persisted: true`, and the aggregates on
//! disk always describe exactly the events on disk.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::TestServer;

/// N >= 100,000 events, mixed single and batched, all answered 202; SIGTERM
/// right after the last answer; after a restart exactly N are stored and
/// the aggregates match the events sent.
#[test]
fn nothing_acknowledged_is_lost_across_a_graceful_restart() {
    let mut server = TestServer::start();
    server.running_experiment("exp", json!({}));
    let mut sent = 0usize;
    // Per unit (batch b, slot j < 400): exposed once in batch b, to control
    // when j is even; converted with value (400 + j) % 7, and again with
    // (800 + j) % 7 when j < 200; then bought 2.5 per single event below.
    let mut expected: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for b in 0..95 {
        let events: Vec<Value> = (0..1000)
            .map(|i| {
                if i < 400 {
                    let variant = if i % 2 == 0 { "control" } else { "treatment" };
                    json!({"type": "exposure", "unit_id": format!("u{b}-{i}"), "experiment": "exp", "variant": variant})
                } else {
                    json!({"type": "conversion", "unit_id": format!("u{b}-{}", (i - 400) % 400), "value": i % 7})
                }
            })
            .collect();
        let (status, body) = server.post("/v1/events", json!({"events": events}));
        assert_eq!(status, 202, "{body}");
        sent += 1000;
    }
    for i in 0..5000 {
        let (status, _) = server.post(
            "/v1/events",
            json!({"type": "conversion", "unit_id": format!("u0-{}", i % 400), "value": 2.5}),
        );
        assert_eq!(status, 202);
        sent += 1;
    }
    assert!(sent >= 100_000);
    let status = server.stop();
    assert!(status.success(), "{status}");
    server.restart_stopped();
    let events = server.stored(None);
    let exposures = server.stored(Some("exp"));
    assert_eq!(events.len() + exposures.len(), sent);
    let mut seqs: Vec<u64> = events
        .iter()
        .chain(&exposures)
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), sent, "every event stored once");

    // The same numbers computed here, independently, per variant.
    for j in 0..400 {
        let variant = if j % 2 == 0 { "control" } else { "treatment" };
        let e = expected.entry(variant.into()).or_default();
        for b in 0..95 {
            let mut unit = f64::from((400 + j) % 7);
            if j < 200 {
                unit += f64::from((800 + j) % 7);
            }
            if b == 0 {
                unit += 2.5 * f64::from((5000 - j + 399) / 400);
            }
            e.0 += unit;
            e.1 += unit * unit;
        }
    }
    let a = server.aggregates("exp");
    for (variant, (sum, sum_squares)) in expected {
        let v = &a["variants"][&variant];
        assert_eq!(v["units"], 95 * 200, "{variant}: {v}");
        let m = &v["measures"]["conversion"];
        assert_eq!(m["units"], 95 * 200);
        let close = |got: &Value, want: f64| (got.as_f64().unwrap() - want).abs() <= 1e-9 * want;
        assert!(close(&m["sum"], sum), "{variant}: {m} vs sum {sum}");
        assert!(
            close(&m["sum_squares"], sum_squares),
            "{variant}: {m} vs {sum_squares}"
        );
    }
}

/// Two writers, one waiting for `ack=persisted`, one fire-and-forget, until
/// the server is killed with SIGKILL mid-load. A persisted request is
/// answered 202 only with `persisted: true` (its batch committed and
/// fsynced), and after a restart every such event is there; the
/// fire-and-forget events lost are counted and reported, and must stay
/// within the mailbox's bound.
#[test]
fn sigkill_loses_nothing_acknowledged_as_persisted() {
    // Four partitions: every request's units span several, each committed
    // on its own; a persisted answer waits for all of them.
    let mut server = TestServer::start_with(&[("ABACUS_INGEST__PARTITIONS", "4")]);
    server.running_experiment("exp", json!({}));
    let server_url = server.url("");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = |mode: &'static str, ack: &'static str| {
        let (stop, url) = (Arc::clone(&stop), server_url.clone());
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let out = Arc::clone(&acked);
        let handle = std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            // Bounded in count as well as by the kill.
            for n in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let ids: Vec<String> = (0..50).map(|i| format!("{mode}-{n}-{i}")).collect();
                let events: Vec<Value> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        let unit = format!("{mode}-{n}-{}", i / 2);
                        if i % 2 == 0 {
                            json!({"event_id": id, "type": "exposure", "unit_id": unit, "experiment": "exp", "variant": "control"})
                        } else {
                            json!({"event_id": id, "type": "conversion", "unit_id": unit, "value": 1.5})
                        }
                    })
                    .collect();
                let response = client
                    .post(format!("{url}/v1/events?ack={ack}"))
                    .json(&json!({"events": events}))
                    .send();
                let Ok(response) = response else { break };
                if response.status().as_u16() != 202 {
                    continue;
                }
                let Ok(body) = response.json::<Value>() else {
                    break;
                };
                assert!(
                    ack == "accepted" || body["persisted"] == true,
                    "202 without persisted: {body}"
                );
                out.lock().unwrap().extend(ids);
            }
        });
        (handle, acked)
    };
    let (durable, durable_ids) = writer("p", "persisted");
    let (casual, casual_ids) = writer("f", "accepted");
    let deadline = Instant::now() + Duration::from_secs(20);
    while durable_ids.lock().unwrap().len() < 20_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    durable.join().unwrap();
    casual.join().unwrap();

    server.restart_stopped();
    let stored: HashSet<String> = server
        .stored(None)
        .iter()
        .chain(&server.stored(Some("exp")))
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let durable_ids = durable_ids.lock().unwrap();
    assert!(durable_ids.len() >= 1_000, "load ran before the kill");
    let missing: Vec<&String> = durable_ids
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} persisted-acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let casual_ids = casual_ids.lock().unwrap();
    let lost = casual_ids.iter().filter(|id| !stored.contains(*id)).count();
    eprintln!(
        "SIGKILL mid-load: {} persisted-acknowledged events all present; \
         {lost} of {} fire-and-forget events lost",
        durable_ids.len(),
        casual_ids.len()
    );
    // Bound: what the mailboxes (8,192 requests together) and a batch in
    // flight per partition can hold.
    assert!(lost <= 8_192 * 50 + 4 * 4_096, "{lost} lost");
    // Aggregates on disk match the events on disk, crash or not, across
    // every partition: `aggregates` compares them with a rebuild from the
    // stored events, and here with a count of them too.
    let a = server.aggregates("exp");
    let exposed: HashSet<String> = server
        .stored(Some("exp"))
        .iter()
        .map(|e| e["unit_id"].as_str().unwrap().to_owned())
        .collect();
    let converted = server
        .stored(None)
        .iter()
        .filter(|e| exposed.contains(e["unit_id"].as_str().unwrap()))
        .count();
    let control = &a["variants"]["control"];
    assert_eq!(control["units"].as_u64(), Some(exposed.len() as u64), "{a}");
    assert_eq!(
        control["measures"]["conversion"]["events"].as_u64(),
        Some(converted as u64),
        "{a}"
    );
    assert!(exposed.len() >= durable_ids.len() / 2, "{a}");
}
