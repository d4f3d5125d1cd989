//! Alerts and guardrails end to end: rules through the API, alerts raised
//! from real traffic, acknowledged and resolved by people or by the
//! condition clearing, kept across a restart, delivered as webhooks; and a
//! guardrail regression pausing its experiment once.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::receiver::{Answer, Receiver};
use crate::common::TestServer;

const WAIT: Duration = Duration::from_secs(20);

fn server() -> TestServer {
    TestServer::start_with(&[
        ("ABACUS_WEBHOOKS__ALLOW_PRIVATE", "true"),
        ("ABACUS_RESULTS__CHECK_INTERVAL_MS", "50"),
    ])
}

/// Polls `path` until `check` holds on its body.
fn wait_until(server: &TestServer, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = server.get(path);
        assert_eq!(status, 200, "{body}");
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never matched: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alerts(body: &Value) -> &Vec<Value> {
    body["alerts"].as_array().unwrap()
}

#[test]
fn rules_are_created_read_changed_and_deleted_with_clear_errors() {
    let server = server();
    let (status, rule) = server.post(
        "/v1/alerts/rules",
        json!({"name": "slow events", "metric": "event_latency_p95_ms", "threshold": 5, "severity": "error"}),
    );
    assert_eq!(status, 201, "{rule}");
    let id = rule["id"].as_str().unwrap();
    assert_eq!(rule["window_s"], 60);
    assert_eq!(rule["enabled"], true);
    let (_, list) = server.get("/v1/alerts/rules");
    assert_eq!(list["rules"][0]["id"], id);
    let (status, changed) = server.call(
        reqwest::Method::PATCH,
        &format!("/v1/alerts/rules/{id}"),
        Some(json!({"threshold": 10, "severity": "critical"})),
    );
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (changed["threshold"].as_f64(), changed["severity"].as_str()),
        (Some(10.0), Some("critical"))
    );
    assert_eq!(server.get(&format!("/v1/alerts/rules/{id}")).1, changed);

    for (body, field) in [
        (json!({"name": "x", "metric": "error_rate"}), "threshold"),
        (
            json!({"name": "x", "metric": "error_rate", "threshold": 2}),
            "threshold",
        ),
        (json!({"name": "", "metric": "srm"}), "name"),
        (
            json!({"name": "x", "metric": "webhook_disabled", "experiment": "e"}),
            "experiment",
        ),
    ] {
        let (status, error) = server.post("/v1/alerts/rules", body);
        assert_eq!(status, 422, "{error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    let (status, error) = server.post("/v1/alerts/rules", json!({"name": "x", "metric": "cpu"}));
    assert_eq!(status, 422, "{error}");

    let (status, _) = server.call(
        reqwest::Method::DELETE,
        &format!("/v1/alerts/rules/{id}"),
        None,
    );
    assert_eq!(status, 204);
    let (status, error) = server.get(&format!("/v1/alerts/rules/{id}"));
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("alert_rule_not_found"))
    );
    let (status, error) = server.get("/v1/alerts/alert_none");
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("alert_not_found"))
    );
    let (status, error) = server.get("/v1/alerts?status=sleeping");
    assert_eq!(status, 400, "{error}");
}

#[test]
fn an_error_rate_alert_is_raised_acknowledged_and_resolves_itself_and_persists() {
    let mut server = server();
    let receiver = Receiver::answering(200);
    let (status, body) = server.post(
        "/v1/webhooks",
        json!({"url": receiver.url(), "events": ["alert.raised", "alert.resolved"]}),
    );
    assert_eq!(status, 201, "{body}");
    let (_, rule) = server.post(
        "/v1/alerts/rules",
        json!({"name": "errors", "metric": "error_rate", "threshold": 0.5, "window_s": 2, "severity": "critical"}),
    );
    // Nine in ten requests fail, until the alert is open.
    let deadline = Instant::now() + WAIT;
    let alert = loop {
        for i in 0..9 {
            server.get(&format!("/v1/experiments/missing-{i}"));
        }
        let (_, open) = server.get("/v1/alerts?status=open");
        if let Some(alert) = alerts(&open).first() {
            break alert.clone();
        }
        assert!(
            Instant::now() < deadline,
            "never raised: {}",
            server.get("/v1/alerts").1
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let id = alert["id"].as_str().unwrap().to_owned();
    assert_eq!(alert["rule_id"], rule["id"]);
    assert_eq!(alert["severity"], "critical");
    assert!(alert["value"].as_f64().unwrap() > 0.5, "{alert}");

    let path = format!("/v1/alerts/{id}/acknowledge");
    let (status, acked) = server.post(&path, json!({"by": "ana", "note": "looking"}));
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["status"], "acknowledged");
    assert_eq!(acked["acknowledged"]["by"], "ana");
    assert_eq!(acked["acknowledged"]["note"], "looking");
    assert!(acked["acknowledged"]["at"].is_string());
    let (status, again) = server.post(&path, json!({"by": "bo"}));
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("invalid_transition"))
    );
    let (status, bad) = server.post(&path, json!({"note": "who?"}));
    assert_eq!(status, 422, "{bad}");

    // Healthy traffic for a window: the condition clears and abacus resolves it.
    let deadline = Instant::now() + WAIT;
    let resolved = loop {
        server.get("/healthz");
        let (_, a) = server.get(&format!("/v1/alerts/{id}"));
        if a["status"] == "resolved" {
            break a;
        }
        assert!(Instant::now() < deadline, "never resolved: {a}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(resolved["resolved"]["by"], "abacus");
    assert_eq!(resolved["acknowledged"]["by"], "ana");

    let delivered = receiver.wait_for(2, WAIT);
    let types: Vec<Value> = delivered.iter().map(|r| r.json()["type"].clone()).collect();
    assert_eq!(types, [json!("alert.raised"), json!("alert.resolved")]);
    assert_eq!(delivered[0].json()["data"]["alert"]["id"], id.as_str());

    server.restart();
    let (_, after) = server.get(&format!("/v1/alerts/{id}"));
    assert_eq!(after, resolved);
    let (_, rules) = server.get("/v1/alerts/rules");
    assert_eq!(rules["rules"][0]["id"], rule["id"]);
}

#[test]
fn resolving_by_hand_while_firing_does_not_raise_it_again_at_once() {
    let server = server();
    server.running_experiment("srm", json!({}));
    // Every unit on one side of a 50/50 split.
    let events: Vec<Value> = (0..400)
        .map(|i| json!({"type": "exposure", "unit_id": format!("u{i}"), "experiment": "srm", "variant": "control"}))
        .collect();
    let (status, body) = server.post("/v1/events", json!({ "events": events }));
    assert_eq!(status, 202, "{body}");
    server.barrier();
    server.post(
        "/v1/alerts/rules",
        json!({"name": "srm", "metric": "srm", "experiment": "srm"}),
    );
    let open = wait_until(&server, "/v1/alerts?experiment=srm", |b| {
        !alerts(b).is_empty()
    });
    let id = alerts(&open)[0]["id"].as_str().unwrap().to_owned();
    let (status, done) = server.post(
        &format!("/v1/alerts/{id}/resolve"),
        json!({"by": "bo", "note": "known: QA traffic"}),
    );
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["resolved"]["by"], "bo");
    std::thread::sleep(Duration::from_secs(3));
    let (_, list) = server.get("/v1/alerts?experiment=srm");
    assert_eq!(alerts(&list).len(), 1, "{list}");
    let (status, _) = server.post(&format!("/v1/alerts/{id}/resolve"), json!({"by": "bo"}));
    assert_eq!(status, 409);
}

#[test]
fn a_guardrail_regression_pauses_the_experiment_once_and_says_why() {
    let server = server();
    let receiver = Receiver::answering(200);
    server.post(
        "/v1/webhooks",
        json!({"url": receiver.url(), "events": ["experiment.paused", "alert.raised"]}),
    );
    let (status, body) = server.post(
        "/v1/experiments",
        json!({
            "key": "checkout", "name": "new checkout",
            "variants": [{"key": "control", "weight": 1}, {"key": "new", "weight": 1}],
            "metrics": [{"key": "purchase", "kind": "binomial"}, {"key": "click", "kind": "binomial"}],
            "primary_metric": "click",
            "guardrails": [{"metric": "purchase", "max_relative_drop": 0.05, "auto_stop": true}]
        }),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(server.post_empty("/v1/experiments/checkout/start").0, 200);
    // Control buys at 30%, the new checkout at 10%. Every exposure is sent
    // before any purchase: the stop can only come once purchases arrive,
    // and a paused experiment refuses exposures, not purchases.
    let mut exposures = Vec::new();
    let mut purchases = Vec::new();
    for (variant, buyers) in [("control", 300), ("new", 100)] {
        for i in 0..1000 {
            let unit = format!("{variant}-{i}");
            exposures.push(json!({"type": "exposure", "unit_id": unit, "experiment": "checkout", "variant": variant}));
            if i < buyers {
                purchases.push(json!({"type": "purchase", "unit_id": unit}));
            }
        }
    }
    let events: Vec<Value> = exposures.into_iter().chain(purchases).collect();
    for chunk in events.chunks(1000) {
        assert_eq!(server.post("/v1/events", json!({ "events": chunk })).0, 202);
    }
    server.barrier();

    let paused = wait_until(&server, "/v1/experiments/checkout", |e| {
        e["status"] == "paused"
    });
    let stop = &paused["guardrail_stop"];
    assert_eq!(
        (stop["metric"].as_str(), stop["variant"].as_str()),
        (Some("purchase"), Some("new"))
    );
    // The monitor may stop it before every chunk is committed (as soon as
    // the evidence suffices), so the lift is that of the data seen then:
    // a drop beyond the tolerance, at most the full data's -2/3 give or take.
    let lift = stop["relative_lift"].as_f64().unwrap();
    assert!((-1.0..-0.05).contains(&lift), "{stop}");
    assert!(stop["p_value"].as_f64().unwrap() < 0.05);
    // Paused: everyone gets the control.
    let (_, a) = server.get("/v1/experiments/checkout/assignment?unit_id=new-1");
    assert_eq!(a["variant"], "control", "{a}");
    let (_, results) = server.get("/v1/experiments/checkout/results");
    assert_eq!(results["guardrails"][0]["regressed"], true, "{results}");

    let (_, list) = server.get("/v1/alerts?experiment=checkout");
    let raised = alerts(&list);
    assert_eq!(raised.len(), 1, "{list}");
    assert_eq!(raised[0]["severity"], "critical");
    assert_eq!(raised[0]["metric"], "guardrail_regression");
    let delivered = receiver.wait_for(2, WAIT);
    let by_type = |t: &str| {
        delivered
            .iter()
            .map(|r| r.json())
            .find(|j| j["type"] == t)
            .unwrap()
    };
    assert_eq!(by_type("experiment.paused")["data"]["reason"], "guardrail");
    assert_eq!(
        by_type("alert.raised")["data"]["alert"]["id"],
        raised[0]["id"]
    );

    // Resumed by a person who accepts the risk: it does not trip again.
    assert_eq!(server.post_empty("/v1/experiments/checkout/resume").0, 200);
    std::thread::sleep(Duration::from_millis(500));
    let (_, e) = server.get("/v1/experiments/checkout");
    assert_eq!(e["status"], "running");
    assert_eq!(e["guardrail_stop"], *stop);
    assert_eq!(
        alerts(&server.get("/v1/alerts?experiment=checkout").1).len(),
        1
    );
    assert_eq!(receiver.received().len(), 2);
}

#[test]
fn latency_rejection_webhook_and_guardrail_rules_fire_on_their_figures() {
    let server = server();
    let rule = |body: Value| {
        let (status, rule) = server.post("/v1/alerts/rules", body);
        assert_eq!(status, 201, "{rule}");
        rule["id"].as_str().unwrap().to_owned()
    };
    let latency = rule(
        json!({"name": "p95", "metric": "event_latency_p95_ms", "threshold": 0, "window_s": 60}),
    );
    let rejections = rule(
        json!({"name": "refused", "metric": "ingest_rejections", "threshold": 2, "window_s": 60}),
    );
    let disabled =
        rule(json!({"name": "hooks", "metric": "webhook_disabled", "severity": "error"}));
    let guardrail = rule(json!({"name": "guard", "metric": "guardrail_regression"}));

    // Any event response time is above 0 ms; three refused events exceed 2.
    assert_eq!(
        server
            .post("/v1/events", json!({"type": "click", "unit_id": "u"}))
            .0,
        422
    );
    let bad: Vec<Value> = (0..3).map(|_| json!({"type": "exposure"})).collect();
    assert_eq!(server.post("/v1/events", json!({ "events": bad })).0, 422);

    // A subscription whose endpoint is gone is disabled at once.
    let receiver = Receiver::answering(410);
    let (_, hook) = server.post(
        "/v1/webhooks",
        json!({"url": receiver.url(), "events": ["webhook.test"]}),
    );
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    server.post_empty(&format!("/v1/webhooks/{hook_id}/test"));

    // A guardrail without auto_stop: the rule fires, the experiment runs on.
    server.post(
        "/v1/experiments",
        json!({
            "key": "g", "name": "g",
            "variants": [{"key": "control", "weight": 1}, {"key": "b", "weight": 1}],
            "metrics": [{"key": "buy", "kind": "binomial"}],
            "guardrails": [{"metric": "buy", "max_relative_drop": 0.0}]
        }),
    );
    server.post_empty("/v1/experiments/g/start");
    let mut events = Vec::new();
    for (variant, buyers) in [("control", 500), ("b", 100)] {
        for i in 0..1000 {
            let unit = format!("{variant}{i}");
            events.push(
                json!({"type": "exposure", "unit_id": unit, "experiment": "g", "variant": variant}),
            );
            if i < buyers {
                events.push(json!({"type": "buy", "unit_id": unit}));
            }
        }
    }
    for chunk in events.chunks(1000) {
        assert_eq!(server.post("/v1/events", json!({ "events": chunk })).0, 202);
    }
    server.barrier();

    let open = wait_until(&server, "/v1/alerts?status=open", |b| alerts(b).len() == 4);
    let of = |rule: &str| {
        alerts(&open)
            .iter()
            .find(|a| a["rule_id"] == rule)
            .unwrap_or_else(|| panic!("no alert of {rule}: {open}"))
            .clone()
    };
    assert!(of(&latency)["value"].as_f64().unwrap() > 0.0);
    assert_eq!(of(&rejections)["value"].as_f64(), Some(4.0));
    assert_eq!(of(&disabled)["subscription"], hook_id.as_str());
    assert_eq!(of(&guardrail)["experiment"], "g");
    let (_, g) = server.get("/v1/experiments/g");
    assert_eq!(g["status"], "running", "no auto_stop: {g}");

    // Re-enabling the subscription clears its alert.
    receiver.set_script(|_| Answer::Status(200));
    server.post_empty(&format!("/v1/webhooks/{hook_id}/enable"));
    let cleared = wait_until(&server, "/v1/alerts?status=resolved", |b| {
        !alerts(b).is_empty()
    });
    assert_eq!(alerts(&cleared)[0]["rule_id"], disabled.as_str());
}
