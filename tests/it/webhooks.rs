//! Webhooks against real receivers on 127.0.0.1: signatures checked by the
//! Standard Webhooks reference library, order per subscriber, retries with
//! the same id and a fresh timestamp, disabling (410 and repeated
//! failure), isolation from a slow endpoint, and delivery after a restart.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::receiver::{Answer, Receiver};
use crate::common::TestServer;

const WAIT: Duration = Duration::from_secs(20);

/// A server that may deliver to loopback, with a fast retry schedule.
fn server(schedule_ms: &str, disable_after: &str) -> TestServer {
    TestServer::start_with(&[
        ("ABACUS_WEBHOOKS__ALLOW_PRIVATE", "true"),
        ("ABACUS_WEBHOOKS__RETRY_SCHEDULE_MS", schedule_ms),
        ("ABACUS_WEBHOOKS__JITTER", "0"),
        ("ABACUS_WEBHOOKS__TIMEOUT_MS", "1000"),
        ("ABACUS_WEBHOOKS__DISABLE_AFTER", disable_after),
    ])
}

/// Subscribes `url` to `events`; returns (id, secret).
fn subscribe(server: &TestServer, url: &str, events: Value) -> (String, String) {
    let (status, body) = server.post("/v1/webhooks", json!({"url": url, "events": events}));
    assert_eq!(status, 201, "{body}");
    (
        body["id"].as_str().unwrap().to_owned(),
        body["secret"].as_str().unwrap().to_owned(),
    )
}

fn create_experiment(server: &TestServer, key: &str) {
    let (status, body) = server.post(
        "/v1/experiments",
        json!({"key": key, "name": key,
               "variants": [{"key": "control", "weight": 1}, {"key": "b", "weight": 1}]}),
    );
    assert_eq!(status, 201, "{body}");
}

/// Polls the subscription until `check` holds.
fn wait_until(server: &TestServer, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, sub) = server.get(&format!("/v1/webhooks/{id}"));
        if check(&sub) {
            return sub;
        }
        assert!(std::time::Instant::now() < deadline, "never: {sub}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn deliveries_are_signed_in_order_and_verify_with_the_reference_library() {
    let server = server("[200]", "5");
    let receiver = Receiver::answering(200);
    let (id, secret) = subscribe(
        &server,
        &receiver.url(),
        json!(["experiment.created", "experiment.started", "webhook.test"]),
    );
    create_experiment(&server, "exp");
    assert_eq!(server.post_empty("/v1/experiments/exp/start").0, 200);
    let (status, queued) = server.post_empty(&format!("/v1/webhooks/{id}/test"));
    assert_eq!(status, 202, "{queued}");

    let got = receiver.wait_for(3, WAIT);
    let types: Vec<Value> = got.iter().map(|r| r.json()["type"].clone()).collect();
    assert_eq!(
        types,
        [
            json!("experiment.created"),
            json!("experiment.started"),
            json!("webhook.test")
        ]
    );
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    for r in &got {
        verifier
            .verify(&r.body, &r.header_map())
            .unwrap_or_else(|e| panic!("{e:?}: {:?}", r.headers));
        assert!(r.headers["webhook-signature"].starts_with("v1,"));
    }
    assert_eq!(got[1].json()["data"]["experiment"]["status"], "running");
    assert_eq!(
        got[2].headers["webhook-id"],
        queued["message_id"].as_str().unwrap()
    );
    // Another subscription's secret does not verify.
    let (_, other) = subscribe(&server, &receiver.url(), json!(["alert.raised"]));
    let wrong = standardwebhooks::Webhook::new(&other).unwrap();
    assert!(wrong.verify(&got[0].body, &got[0].header_map()).is_err());

    let sub = wait_until(&server, &id, |s| s["stats"]["delivered"] == 3);
    assert_eq!(sub["success_rate"], 1.0);
    assert_eq!((&sub["pending"], &sub["messages"]), (&json!(0), &json!(3)));
    assert!(sub.get("secret").is_none(), "the secret is shown only once");
    let (_, log) = server.get(&format!("/v1/webhooks/{id}/deliveries?limit=2"));
    let page = log["deliveries"].as_array().unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["type"], "webhook.test", "newest first");
    assert_eq!(
        (&page[0]["status_code"], &page[0]["outcome"]),
        (&json!(200), &json!("delivered"))
    );
    let cursor = log["next_cursor"].as_u64().unwrap();
    let (_, rest) = server.get(&format!("/v1/webhooks/{id}/deliveries?cursor={cursor}"));
    assert_eq!(rest["deliveries"][0]["type"], "experiment.created");
    assert_eq!(rest["next_cursor"], Value::Null);
}

#[test]
fn a_failed_message_is_retried_with_the_same_id_and_holds_back_the_next() {
    let server = server("[1100, 1100]", "5");
    let receiver = Receiver::start(|n| {
        if n < 2 {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    });
    let (id, secret) = subscribe(&server, &receiver.url(), json!(["experiment.created"]));
    create_experiment(&server, "first");
    create_experiment(&server, "second");
    let got = receiver.wait_for(4, WAIT);
    let keys: Vec<Value> = got
        .iter()
        .map(|r| r.json()["data"]["experiment"]["key"].clone())
        .collect();
    assert_eq!(
        keys,
        [
            json!("first"),
            json!("first"),
            json!("first"),
            json!("second")
        ]
    );
    let ids: Vec<&String> = got[..3].iter().map(|r| &r.headers["webhook-id"]).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "same webhook-id on every retry"
    );
    let stamps: Vec<i64> = got[..3]
        .iter()
        .map(|r| r.headers["webhook-timestamp"].parse().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[1] > w[0]),
        "fresh timestamps: {stamps:?}"
    );
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    for r in &got {
        verifier.verify(&r.body, &r.header_map()).unwrap();
    }
    let sub = wait_until(&server, &id, |s| s["stats"]["delivered"] == 2);
    assert_eq!(
        (&sub["stats"]["attempts"], &sub["stats"]["failures"]),
        (&json!(4), &json!(2))
    );
    assert_eq!(sub["stats"]["last_error"], "HTTP 500");
    let (_, log) = server.get(&format!("/v1/webhooks/{id}/deliveries"));
    let outcomes: Vec<&str> = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["delivered", "delivered", "retrying", "retrying"]);
}

#[test]
fn retry_after_is_honoured() {
    let server = server("[100]", "5");
    let receiver = Receiver::start(|n| {
        if n == 0 {
            Answer::RetryAfter(503, 2)
        } else {
            Answer::Status(200)
        }
    });
    let (id, _) = subscribe(&server, &receiver.url(), json!(["experiment.created"]));
    create_experiment(&server, "a");
    wait_until(&server, &id, |s| s["stats"]["delivered"] == 1);
    let (_, log) = server.get(&format!("/v1/webhooks/{id}/deliveries"));
    let at = |i: usize| {
        time::OffsetDateTime::parse(
            log["deliveries"][i]["at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let waited = at(0) - at(1);
    assert!(
        waited >= time::Duration::milliseconds(1900),
        "retried after {waited} despite Retry-After: 2"
    );
}

#[test]
fn gone_disables_at_once_and_enable_delivers_what_was_pending() {
    let server = server("[200]", "5");
    let receiver = Receiver::answering(410);
    let (id, _) = subscribe(&server, &receiver.url(), json!(["experiment.created"]));
    create_experiment(&server, "a");
    let sub = wait_until(&server, &id, |s| s["enabled"] == false);
    assert_eq!(sub["disabled"]["reason"], "gone");
    assert_eq!(sub["pending"], 1);
    // Nothing new is queued while disabled.
    create_experiment(&server, "b");
    std::thread::sleep(Duration::from_millis(300));
    let (_, still) = server.get(&format!("/v1/webhooks/{id}"));
    assert_eq!(
        (&still["pending"], &still["stats"]["attempts"]),
        (&json!(1), &json!(1))
    );

    receiver.set_script(|_| Answer::Status(204));
    let (status, enabled) = server.post_empty(&format!("/v1/webhooks/{id}/enable"));
    assert_eq!(
        (status, &enabled["enabled"]),
        (200, &json!(true)),
        "{enabled}"
    );
    let got = receiver.wait_for(2, WAIT);
    assert_eq!(got[1].json()["data"]["experiment"]["key"], "a");
    wait_until(&server, &id, |s| {
        s["pending"] == 0 && s["stats"]["delivered"] == 1
    });
}

#[test]
fn repeated_failures_disable_the_subscription_and_timeouts_and_closes_count() {
    let server = server("[100]", "2");
    // Per message: a closed connection, then a timeout (the server waits 1 s).
    let receiver = Receiver::start(|n| {
        if n % 2 == 0 {
            Answer::Close
        } else {
            Answer::Delay(Duration::from_millis(2500))
        }
    });
    let (id, _) = subscribe(&server, &receiver.url(), json!(["experiment.created"]));
    create_experiment(&server, "a");
    create_experiment(&server, "b");
    let sub = wait_until(&server, &id, |s| s["enabled"] == false);
    assert_eq!(sub["disabled"]["reason"], "failing");
    assert_eq!(
        (&sub["stats"]["failed_messages"], &sub["stats"]["attempts"]),
        (&json!(2), &json!(4))
    );
    assert_eq!(sub["success_rate"], 0.0);
    let (_, log) = server.get(&format!("/v1/webhooks/{id}/deliveries"));
    let errors: Vec<&str> = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["error"].as_str().unwrap())
        .collect();
    assert!(errors.iter().any(|e| e.contains("timed out")), "{errors:?}");
    assert_eq!(log["deliveries"][0]["outcome"], "failed");
    assert!(log["deliveries"][0]["status_code"].is_null());
}

#[test]
fn a_slow_endpoint_does_not_delay_a_fast_one() {
    let server = TestServer::start_with(&[
        ("ABACUS_WEBHOOKS__ALLOW_PRIVATE", "true"),
        ("ABACUS_WEBHOOKS__TIMEOUT_MS", "10000"),
    ]);
    let slow = Receiver::start(|_| Answer::Delay(Duration::from_secs(5)));
    let fast = Receiver::answering(200);
    subscribe(&server, &slow.url(), json!(["experiment.created"]));
    subscribe(&server, &fast.url(), json!(["experiment.created"]));
    for key in ["a", "b", "c"] {
        create_experiment(&server, key);
    }
    fast.wait_for(3, WAIT);
    assert!(
        slow.received().len() <= 1,
        "the slow endpoint is still on its first message"
    );
}

#[test]
fn pending_messages_are_delivered_after_a_restart() {
    let mut server = server("[500, 500, 500, 500, 500, 500, 500, 500]", "5");
    let receiver = Receiver::answering(503);
    let (id, secret) = subscribe(&server, &receiver.url(), json!(["experiment.created"]));
    create_experiment(&server, "a");
    receiver.wait_for(1, WAIT);
    server.stop();
    receiver.set_script(|_| Answer::Status(200));
    server.restart_stopped();
    let got = receiver.wait_for(2, WAIT);
    let last = got.last().unwrap();
    assert_eq!(last.json()["data"]["experiment"]["key"], "a");
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&last.body, &last.header_map())
        .unwrap();
    wait_until(&server, &id, |s| {
        s["stats"]["delivered"] == 1 && s["pending"] == 0
    });
}

#[test]
fn private_and_non_http_targets_are_refused_by_default() {
    let server = TestServer::start();
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:10.0.0.1]/hook",
        "ftp://example.com/hook",
    ] {
        let (status, body) = server.post(
            "/v1/webhooks",
            json!({"url": url, "events": ["experiment.created"]}),
        );
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some("url")),
            "{url}: {body}"
        );
    }
    let (status, body) = server.post(
        "/v1/webhooks",
        json!({"url": "http://x", "events": ["nope"]}),
    );
    assert_eq!(status, 422, "{body}");
    let (status, _) = server.get("/v1/webhooks/wh_missing");
    assert_eq!(status, 404);
}

#[test]
fn a_deleted_subscription_stays_deleted_and_receives_nothing_more() {
    let mut server = server("[300, 300, 300, 300, 300, 300]", "5");
    let receiver = Receiver::answering(500);
    let (id, _) = subscribe(&server, &receiver.url(), json!(["experiment.created"]));
    create_experiment(&server, "a");
    receiver.wait_for(1, WAIT);
    let (status, _) = server.delete(&format!("/v1/webhooks/{id}"));
    assert_eq!(status, 204);
    let (status, _) = server.get(&format!("/v1/webhooks/{id}"));
    assert_eq!(status, 404);
    let seen = receiver.received().len();
    create_experiment(&server, "b");
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        receiver.received().len() <= seen + 1,
        "at most the attempt in flight"
    );
    server.restart();
    let (status, _) = server.get(&format!("/v1/webhooks/{id}"));
    assert_eq!(
        status, 404,
        "not resurrected by an attempt that finished late"
    );
    let (_, list) = server.get("/v1/webhooks");
    assert_eq!(list["webhooks"], json!([]));
}

#[test]
fn a_change_of_split_is_announced_as_experiment_reallocated_with_its_phase() {
    let server = server("[200]", "5");
    let receiver = Receiver::answering(200);
    subscribe(&server, &receiver.url(), json!(["experiment.reallocated"]));
    create_experiment(&server, "split");
    assert_eq!(server.post_empty("/v1/experiments/split/start").0, 200);
    // A patch that leaves the split alone says nothing.
    let (status, _) = server.patch("/v1/experiments/split", json!({"name": "renamed"}));
    assert_eq!(status, 200);
    let (status, patched) = server.patch(
        "/v1/experiments/split",
        json!({"variants": [{"key": "control", "weight": 3}, {"key": "b", "weight": 1}]}),
    );
    assert_eq!(status, 200, "{patched}");
    let got = receiver.wait_for(1, WAIT);
    assert_eq!(got.len(), 1);
    let event = got[0].json();
    assert_eq!(event["type"], "experiment.reallocated", "{event}");
    assert_eq!(event["data"]["reason"], "patch", "{event}");
    assert_eq!(event["data"]["phase"]["number"], 2, "{event}");
    assert_eq!(
        event["data"]["phase"]["weights"],
        json!([0.75, 0.25]),
        "{event}"
    );
    assert_eq!(event["data"]["phase"], patched["phases"][1]);
}
