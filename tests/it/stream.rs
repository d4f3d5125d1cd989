//! The live stream (SSE): domain events as they happen, per-second stats,
//! experiment filters, `Last-Event-ID` resumption, and a prompt graceful
//! shutdown with clients connected.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::TestServer;

/// One SSE message.
#[derive(Debug, Clone)]
pub(crate) struct Sse {
    pub(crate) id: u64,
    pub(crate) event: String,
    pub(crate) data: Value,
}

/// Connects and forwards every message to a channel from a reader thread.
pub(crate) fn connect(
    server: &TestServer,
    query: &str,
    last_id: Option<u64>,
) -> mpsc::Receiver<Sse> {
    let client = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap();
    let mut request = client.get(server.url(&format!("/v1/stream{query}")));
    if let Some(token) = server.token() {
        request = request.bearer_auth(token);
    }
    if let Some(id) = last_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(response).lines();
        let (mut id, mut event) = (0, String::new());
        while let Some(Ok(line)) = lines.next() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().unwrap();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                let data = serde_json::from_str(v).unwrap();
                if tx
                    .send(Sse {
                        id,
                        event: event.clone(),
                        data,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

/// Waits for the first message matching `pick`.
fn expect(rx: &mpsc::Receiver<Sse>, pick: impl Fn(&Sse) -> bool) -> Sse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) if pick(&m) => return m,
            Ok(_) => {}
            Err(e) => panic!("no matching message: {e}"),
        }
    }
}

#[test]
fn the_stream_carries_domain_events_and_per_second_stats_and_resumes() {
    let mut server = TestServer::start();
    let all = connect(&server, "", None);
    let only_b = connect(&server, "?experiment=b", None);
    server.running_experiment(
        "a",
        json!({"metrics": [{"key": "buy", "kind": "binomial"}], "primary_metric": "buy"}),
    );
    let started = expect(&all, |m| m.event == "experiment.started");
    assert_eq!(started.data["data"]["experiment"]["key"], "a");

    for unit in ["u1", "u2", "u3"] {
        server.assign("a", unit);
    }
    server.post("/v1/events", json!({"type": "buy", "unit_id": "u1"}));
    let stats = expect(&all, |m| {
        m.event == "stats" && m.data["exposures_per_s"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(stats.data["experiment"], "a");
    let units: u64 = stats.data["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["units"].as_u64().unwrap())
        .sum();
    assert!(units >= 1, "{}", stats.data);

    // Missed while disconnected, replayed on reconnect.
    let last = stats.id;
    drop(all);
    server.post(
        "/v1/experiments",
        json!({"key": "b", "name": "b", "variants": [{"key": "x", "weight": 1}, {"key": "y", "weight": 1}]}),
    );
    let filtered = expect(&only_b, |m| m.event == "experiment.created");
    assert_eq!(filtered.data["data"]["experiment"]["key"], "b");
    let resumed = connect(&server, "", Some(last));
    let replayed = expect(&resumed, |m| m.event == "experiment.created");
    assert!(replayed.id > last);
    assert_eq!(replayed.data["data"]["experiment"]["key"], "b");
    // The filtered stream never saw experiment a.
    while let Ok(m) = only_b.try_recv() {
        assert_ne!(m.data["experiment"], "a", "{m:?}");
    }

    // Connected clients do not hold up a graceful stop.
    let began = Instant::now();
    assert!(server.stop().success());
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
}

/// Opens `/v1/ws{query}` and forwards each text frame, parsed.
fn connect_ws(server: &TestServer, query: &str) -> mpsc::Receiver<Sse> {
    let url = server
        .url(&format!("/v1/ws{query}"))
        .replacen("http", "ws", 1);
    let (mut socket, response) = tungstenite::connect(url).unwrap();
    assert_eq!(response.status(), 101);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(frame) = socket.read() {
            let tungstenite::Message::Text(text) = frame else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            let m = Sse {
                id: v["id"].as_u64().unwrap_or(0),
                event: v["event"].as_str().unwrap().to_owned(),
                data: v["data"].clone(),
            };
            if tx.send(m).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn the_websocket_carries_the_same_feed_filters_and_resumes() {
    let mut server = TestServer::start();
    let (status, body) = server.get("/v1/ws");
    assert_eq!(status, 426, "{body}");
    assert_eq!(body["error"]["code"], "upgrade_required");

    let only_a = connect_ws(&server, "?experiment=a");
    server.running_experiment(
        "b",
        json!({"metrics": [{"key": "buy", "kind": "binomial"}], "primary_metric": "buy"}),
    );
    server.running_experiment(
        "a",
        json!({"metrics": [{"key": "buy", "kind": "binomial"}], "primary_metric": "buy"}),
    );
    let created = expect(&only_a, |m| m.event == "experiment.created");
    assert_eq!(created.data["data"]["experiment"]["key"], "a");
    let started = expect(&only_a, |m| m.event == "experiment.started");
    assert!(started.id > created.id);
    server.assign("a", "u1");
    let stats = expect(&only_a, |m| {
        m.event == "stats" && m.data["exposures_per_s"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(stats.data["experiment"], "a");
    while let Ok(m) = only_a.try_recv() {
        assert_ne!(m.data["experiment"], "b", "{m:?}");
    }

    // Browsers cannot set Last-Event-ID on a WebSocket: the query does it.
    let resumed = connect_ws(&server, &format!("?last_event_id={}", created.id));
    let replayed = expect(&resumed, |m| m.event == "experiment.started");
    assert_eq!(replayed.id, started.id);
    assert!(server.stop().success());
}

#[test]
fn alerts_are_on_the_stream_as_they_are_raised() {
    let server = TestServer::start();
    let all = connect(&server, "", None);
    let (status, rule) = server.post(
        "/v1/alerts/rules",
        json!({"name": "errors", "metric": "error_rate", "threshold": 0.5, "window_s": 5}),
    );
    assert_eq!(status, 201, "{rule}");
    for i in 0..20 {
        assert_eq!(server.get(&format!("/v1/experiments/missing-{i}")).0, 404);
    }
    let raised = expect(&all, |m| m.event == "alert.raised");
    assert_eq!(raised.data["data"]["alert"]["rule_id"], rule["id"]);
    assert_eq!(raised.data["data"]["alert"]["status"], "open");
}
